"""A real nginx (Debian package) inside the pod, plain HTTP or TLS, with its files in the test's tmp."""

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
                tls: tuple[Path, Path] | None = None, locations: str = "") -> None:
    """nginx serving `files` (name -> content, in subfolders too) on 127.0.0.1:port; `tls` =
    (certificate, key); `locations`: more directives of the server block."""
    tmp = pod.tmp / "nginx"
    (tmp / "www").mkdir(parents=True)
    for name, content in (files or {}).items():
        (tmp / "www" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "www" / name).write_bytes(content)
    ssl = f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};" if tls else ""
    conf = tmp / "nginx.conf"
    conf.write_text(CONF.format(tmp=tmp, port=port, ssl=" ssl" if tls else "", tls=ssl, locations=locations))
    pod.spawn(["nginx", "-c", str(conf)], inside=True)
    wait_port(port)  # for TLS a plain connect: a failed handshake, no request
