/* node_cost's socket-call loop: write and read one byte over a Unix socketpair `n` times and
 * print the nanoseconds per write+read pair. Each call fires sock_send_length or
 * sock_recv_length, which every sidecar of the node hooks: what the loop loses per sidecar is
 * what one hooked socket call costs every process of the node. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	struct timespec t0, t1;
	int sv[2];
	char b = 'x';

	if (n < 1 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) {
		perror("sockcalls");
		return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < n; i++) {
		if (write(sv[0], &b, 1) != 1 || read(sv[1], &b, 1) != 1) {
			perror("sockcalls");
			return 1;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
	return 0;
}
