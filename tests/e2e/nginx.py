"""A real nginx (Debian package) inside the pod, plain HTTP or TLS, HTTP/1.1 or HTTP/2 (nginx 1.22:
`listen ... http2`, cleartext h2c with prior knowledge or TLS with ALPN h2), with its files in the
test's tmp."""

from __future__ import annotations

from pathlib import Path

from .pod import Pod, wait_port

CONF = """
daemon off;
master_process on;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port}{ssl};
        {tls}
        root {tmp}/www;
        {locations}
    }}
}}
"""


def start_nginx(pod: Pod, port: int, files: dict[str, bytes] | None = None,
                tls: tuple[Path, Path] | None = None, locations: str = "", http2: bool = False) -> None:
    """nginx serving `files` (name -> content, in subfolders too) on 127.0.0.1:port; `tls` =
    (certificate, key); `locations`: more directives of the server block; `http2`: HTTP/2 on
    that port (without TLS h2c with prior knowledge only; with TLS whatever ALPN chooses)."""
    tmp = pod.tmp / "nginx"
    (tmp / "www").mkdir(parents=True)
    for name, content in (files or {}).items():
        (tmp / "www" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "www" / name).write_bytes(content)
    ssl = f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};" if tls else ""
    conf = tmp / "nginx.conf"
    listen = " ssl" * bool(tls) + " http2" * http2
    conf.write_text(CONF.format(tmp=tmp, port=port, ssl=listen, tls=ssl, locations=locations))
    pod.spawn(["nginx", "-c", str(conf)], inside=True)
    wait_port(port)  # for TLS a plain connect: a failed handshake, no request
