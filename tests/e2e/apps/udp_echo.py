"""UDP echo server: `python udp_echo.py ADDRESS PORT` (IPv4 or IPv6 address); sends back each datagram."""

import socket
import sys

address, port = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((address, port))
while True:
    data, peer = sock.recvfrom(65535)
    sock.sendto(data, peer)
