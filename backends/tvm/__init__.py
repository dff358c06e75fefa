"""Apache TVM (Relax) backend: IR -> Relax -> TVM's pipeline for the target -> shared library."""

from backends.tvm.compile import CompiledModule, compile_model, unsupported_nodes
from backends.tvm.target import host_target, resolve_target

__all__ = ["CompiledModule", "compile_model", "host_target", "resolve_target", "unsupported_nodes"]
