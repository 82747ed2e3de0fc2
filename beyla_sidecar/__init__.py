"""beyla-sidecar: per-pod eBPF auto-instrumentation."""

__version__ = "0.1.0"
