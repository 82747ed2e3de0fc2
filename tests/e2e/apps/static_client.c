/* Test app: one HTTPS GET with OpenSSL linked statically (SSL_write/SSL_read in the
 * executable itself), after DELAY_MS. Usage: static_client PORT PATH [DELAY_MS]; prints
 * the response. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
	char req[512], buf[4096];
	int fd = socket(AF_INET, SOCK_STREAM, 0), n, len;
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = SSL_new(ctx);

	if (argc > 3)
		usleep(atoi(argv[3]) * 1000);
	inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) || !SSL_set_fd(ssl, fd) ||
	    SSL_connect(ssl) != 1)
		return 1;
	len = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", argv[2]);
	if (SSL_write(ssl, req, len) != len)
		return 2;
	while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, n, stdout);
	SSL_shutdown(ssl);
	close(fd);
	return 0;
}
