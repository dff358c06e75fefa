"""Remote stages and tuning over TVM's RPC, with workers that refuse clients without the key.

**What TVM's key is.** TVM's RPC handshake sends ``client:KEY`` in clear text and the server
compares it with its own key. Without a tracker that is a shared-string check (no challenge:
whoever sees one handshake can replay it). Through a tracker, the key is only a *matching
label*: servers register under it, the tracker hands any client that asks for the label a
server's address and its one-time match key (``LABEL:random``), and the tracker's summary lists
every label — the tracker authenticates nobody. So TVM's key alone does not keep anyone out.

**What this module adds.** A worker (:func:`serve`, ``python -m compiler serve-worker``) runs
TVM's own RPC session code (``tvm.rpc.server._serving``: a forked process per session serving
TVM's RPC protocol) behind an accept loop that requires, in the handshake, a fresh proof of the
secret key: ``-auth=TS.NONCE.HMAC`` with ``HMAC = HMAC-SHA256(key, matchkey|TS|NONCE)``. The
worker refuses (``RPC_CODE_MISMATCH``, then closes) a client whose proof is missing, wrong,
older than :data:`MAX_SKEW_S`, or replayed (nonces are remembered). The tracker only ever sees
the public label ``compiler-<sha256(key)[:16]>``, never the key. Clients: :func:`connect`
(direct), :func:`request` (through a tracker), :func:`metaschedule_session` (MetaSchedule's
RPC runner).

Limits, plainly: the proof authenticates the *start* of a session; the session itself is TVM's
unencrypted RPC stream, so anyone who can tamper with the network path can hijack it, and an
authenticated client can run any code on the worker (it uploads and loads shared libraries —
that is what RPC is for). Bind workers to loopback (the default) or a trusted network; tunnel
(SSH, WireGuard) across untrusted ones. A key given with ``--key`` is visible to local users
in the process list; ``--key-file`` avoids that.

The worker registers this package's host kernels (:mod:`compiler.kernels`) before serving, so
stage libraries that call them run remotely; a stock ``tvm.exec.rpc_server`` lacks them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.artifact import LIBRARY_FILE, WEIGHTS_FILE, read_manifest
from compiler.errors import ArtifactError, CompilerError, InputError

__all__ = [
    "MAX_SKEW_S",
    "RemotePipeline",
    "RpcError",
    "auth_token",
    "check_token",
    "connect",
    "metaschedule_session",
    "public_label",
    "request",
    "serve",
]

MAX_SKEW_S = 120.0  # a proof older (or newer) than this is refused
PING_S = 2.0  # how often a worker checks with the tracker while idle


class RpcError(CompilerError):
    """An RPC worker or tracker refused, could not be reached, or failed."""


def public_label(key: str) -> str:
    """The label a worker registers under at the tracker: derived from the key, not the key."""
    return "compiler-" + hashlib.sha256(b"compiler-rpc-label\0" + key.encode()).hexdigest()[:16]


def auth_token(key: str, matchkey: str, *, now: float | None = None) -> str:
    """A one-time proof of ``key`` bound to ``matchkey``: ``TS.NONCE.HMAC``."""
    stamp = int(now if now is not None else time.time())
    nonce = secrets.token_hex(12)
    mac = hmac.new(key.encode(), f"{matchkey}|{stamp}|{nonce}".encode(), hashlib.sha256)
    return f"{stamp}.{nonce}.{mac.hexdigest()}"


def check_token(key: str, matchkey: str, token: str, seen: dict[str, float]) -> str | None:
    """None if ``token`` proves ``key`` for ``matchkey`` now, else why not. Records the nonce
    in ``seen`` (nonce -> time) so that a replay is refused; forgets nonces past the skew."""
    try:
        stamp_text, nonce, mac = token.split(".")
        stamp = int(stamp_text)
    except ValueError:
        return "malformed proof"
    now = time.time()
    for old in [n for n, t in seen.items() if now - t > 2 * MAX_SKEW_S]:
        del seen[old]
    expected = hmac.new(key.encode(), f"{matchkey}|{stamp}|{nonce}".encode(), hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest(), mac):
        return "wrong key"
    if abs(now - stamp) > MAX_SKEW_S:
        return "expired proof"
    if nonce in seen:
        return "replayed proof"
    seen[nonce] = now
    return None


# ------------------------------------------------------------------------------------- server
def _handshake(conn: socket.socket, key: str, matchkey: str, seen: dict[str, float]):
    """Reads TVM's client handshake; answers success (and returns the options) or refuses."""
    from tvm.rpc import base

    conn.settimeout(10.0)
    magic = struct.unpack("<i", base.recvall(conn, 4))[0]
    if magic != base.RPC_MAGIC:
        return None, "not a TVM RPC client"
    size = struct.unpack("<i", base.recvall(conn, 4))[0]
    if not 0 < size <= 4096:
        return None, "oversized handshake"
    words = base.recvall(conn, size).decode("utf-8", "replace").split()
    options = [w for w in words[1:] if not w.startswith("-auth=")]
    proofs = [w[len("-auth=") :] for w in words[1:] if w.startswith("-auth=")]
    if not words or words[0] != "client:" + matchkey:
        reason = "unknown match key"
    elif len(proofs) != 1:
        reason = "no proof of the key"
    else:
        reason = check_token(key, matchkey, proofs[0], seen)
    if reason is not None:
        conn.sendall(struct.pack("<i", base.RPC_CODE_MISMATCH))
        return None, reason
    server_key = "server:" + public_label(key)
    conn.sendall(struct.pack("<i", base.RPC_CODE_SUCCESS))
    conn.sendall(struct.pack("<i", len(server_key)))
    conn.sendall(server_key.encode())
    conn.settimeout(None)
    from tvm.rpc.server import _parse_server_opt

    return _parse_server_opt(options), None


class _Tracker:
    """A worker's registration at a tracker (TVM's tracker protocol, as TVM's server speaks it)."""

    def __init__(self, address: tuple[str, int], label: str, port: int, custom_addr) -> None:
        from tvm.rpc import base

        self.base, self.label, self.port, self.custom_addr = base, label, port, custom_addr
        self.sock = base.connect_with_retry(address, timeout=30)
        self.sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(self.sock, 4))[0] != base.RPC_TRACKER_MAGIC:
            raise RpcError(f"{address[0]}:{address[1]} is not a TVM RPC tracker")
        info = {"key": "server:" + label, "addr": (custom_addr, port)}
        self._call([base.TrackerCode.UPDATE_INFO, info])
        self.matchkey = ""
        self.renew()

    def _call(self, message):
        self.base.sendjson(self.sock, message)
        return self.base.recvjson(self.sock)

    def renew(self) -> None:
        """Offers this worker under a new one-time match key."""
        self.matchkey = f"{self.label}:{secrets.token_hex(8)}"
        answer = self._call(
            [self.base.TrackerCode.PUT, self.label, (self.port, self.matchkey), self.custom_addr]
        )
        if answer != self.base.TrackerCode.SUCCESS:
            raise RpcError(f"the tracker refused the registration: {answer}")

    def pending(self) -> bool:
        """Whether the tracker still offers (has not handed out) the current match key."""
        return self.matchkey in self._call([self.base.TrackerCode.GET_PENDING_MATCHKEYS])


def serve(
    key: str,
    *,
    host: str = "127.0.0.1",
    port: int = 9091,
    tracker: tuple[str, int] | None = None,
    custom_addr: str | None = None,
    on_ready: Callable[[str, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serves TVM RPC sessions on ``host:port`` (0: any free port) to clients proving ``key``.

    With ``tracker``, registers there under :func:`public_label` and re-registers after each
    session (or when a client took the match key but never came). One session at a time, in a
    forked process (TVM's ``_serving``). Runs until ``stop`` is set (or forever).
    """
    from tvm.rpc.server import _serving

    import compiler.kernels  # noqa: F401  (stage libraries call these host kernels)

    _register_stage_functions()

    if len(key) < 8:
        raise InputError("the RPC key must be at least 8 characters")
    say = log or (lambda message: None)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        raise RpcError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    listener.listen(4)
    port = listener.getsockname()[1]
    label = public_label(key)
    registration = None
    if tracker is not None:
        try:
            registration = _Tracker(tracker, label, port, custom_addr)
        except (OSError, RuntimeError) as e:
            raise RpcError(f"cannot reach the tracker {tracker[0]}:{tracker[1]}: {e}") from e

    def check_in() -> None:  # keeps the registration alive; reconnects a lost tracker
        nonlocal registration, unclaimed
        try:
            if registration is None:
                registration = _Tracker(tracker, label, port, custom_addr)
                say("registered at the tracker again")
            # The tracker handed our match key to a client that never came: renew it.
            unclaimed = 0 if registration.pending() else unclaimed + 1
            if unclaimed * PING_S > 6.0:
                registration.renew()
                unclaimed = 0
        except (OSError, RuntimeError, ValueError, RpcError) as e:
            if registration is not None:
                say(f"lost the tracker ({e}); retrying")
                registration.sock.close()
            registration = None

    if on_ready is not None:
        on_ready(host, port)
    seen: dict[str, float] = {}
    unclaimed = 0
    try:
        while stop is None or not stop.is_set():
            ready, _, _ = select.select([listener], [], [], PING_S)
            if not ready:
                if tracker is not None:
                    check_in()
                continue
            conn, address = listener.accept()
            matchkey = registration.matchkey if registration is not None else label
            try:
                options, reason = _handshake(conn, key, matchkey, seen)
            except (OSError, struct.error, UnicodeError) as e:
                options, reason = None, f"broken handshake ({e})"
            if options is None:
                say(f"refused {address[0]}:{address[1]}: {reason}")
                conn.close()
                continue
            say(f"session from {address[0]}:{address[1]}")
            try:
                _serving(conn, address, options, None)
                say("session ended")
            except RuntimeError as e:  # the session's process died: serve the next one
                say(f"session failed: {e}")
            if registration is not None:
                unclaimed = 0
                try:
                    registration.renew()
                except (OSError, RuntimeError, ValueError, RpcError):
                    registration.sock.close()
                    registration = None
    finally:
        listener.close()
        if registration is not None:
            registration.sock.close()


# ------------------------------------------------------------------------------------- client
def connect(host: str, port: int, key: str, *, session_timeout: float = 0, matchkey: str = ""):
    """A TVM RPC session with the worker at ``host:port`` (direct, no tracker)."""
    from tvm import rpc

    matchkey = matchkey or public_label(key)
    handshake = f"{matchkey} -auth={auth_token(key, matchkey)}"
    try:
        return rpc.connect(host, port, handshake, session_timeout=session_timeout)
    except Exception as e:  # TVM raises RuntimeError/TVMError with a C++ trace
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RpcError(f"RPC worker {host}:{port} refused or failed the connection: {first}") from e


def request(
    tracker_host: str,
    tracker_port: int,
    key: str,
    *,
    session_timeout: float = 0,
    timeout: float = 60.0,
):
    """A TVM RPC session with a free worker registered at the tracker for ``key``."""
    from tvm.rpc import base

    label = public_label(key)
    deadline = time.monotonic() + timeout
    last = "no worker registered"
    while time.monotonic() < deadline:
        try:
            sock = base.connect_with_retry((tracker_host, tracker_port), timeout=10)
        except (OSError, RuntimeError) as e:
            raise RpcError(f"cannot reach the tracker {tracker_host}:{tracker_port}: {e}") from e
        try:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
                raise RpcError(f"{tracker_host}:{tracker_port} is not a TVM RPC tracker")
            base.sendjson(sock, [base.TrackerCode.REQUEST, label, "", 1])
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            answer = base.recvjson(sock)  # the tracker answers once a worker is free
        except TimeoutError:
            raise RpcError(
                f"no RPC worker for this key became free at {tracker_host}:{tracker_port} within "
                f"{timeout:g} s (none registered, or all busy)"
            ) from None
        finally:
            sock.close()
        if answer[0] != base.TrackerCode.SUCCESS:
            raise RpcError(f"the tracker refused the request: {answer}")
        host, port, matchkey = answer[1]
        try:
            return connect(host, port, key, session_timeout=session_timeout, matchkey=matchkey)
        except RpcError as e:  # the worker renewed its match key meanwhile: ask again
            last = str(e)
            time.sleep(0.5)
    raise RpcError(f"no RPC worker for this key at {tracker_host}:{tracker_port}: {last}")


def metaschedule_session(rpc_config):
    """``f_create_session`` for MetaSchedule's ``RPCRunner``: ``rpc_config.tracker_key`` holds
    the secret key (it never reaches the tracker; :func:`public_label` does)."""
    return request(
        rpc_config.tracker_host,
        rpc_config.tracker_port,
        rpc_config.tracker_key,
        session_timeout=rpc_config.session_timeout_sec or 0,
    )


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdecimal():
        raise InputError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


# ------------------------------------------------------------------------------ remote stages
_STAGE_FILES = (LIBRARY_FILE, WEIGHTS_FILE, "report.json", "manifest.json")


def _register_stage_functions() -> None:
    """Server-side functions a client calls over RPC: load an uploaded stage, run it.

    The stage runs in the worker with the ordinary runtime (its VM and weights local); a call
    moves one frame of bytes each way (:func:`compiler.stages.pack_arrays`). Running TVM's VM
    over the session instead would send every kernel call and tensor handle across it.
    """
    import tvm_ffi

    from compiler.runtime import CompiledModel
    from compiler.stages import pack_arrays, unpack_arrays

    loaded: dict[int, CompiledModel] = {}

    def load(name: str) -> int:
        workpath = tvm_ffi.get_global_func("tvm.rpc.server.workpath")
        folder = Path(workpath(name))
        folder.mkdir(exist_ok=True)
        for file in _STAGE_FILES:
            os.replace(workpath(f"{name}-{file}"), folder / file)
        loaded[len(loaded)] = CompiledModel(folder)  # checks the uploaded files' sha256
        return len(loaded) - 1

    def run(handle: int, frame: bytes) -> bytes:
        _, arrays = unpack_arrays(bytes(frame))
        return pack_arrays(loaded[handle](arrays))

    tvm_ffi.register_global_func("compiler.stage.load", load, override=True)
    tvm_ffi.register_global_func("compiler.stage.run", run, override=True)


class _RemoteStage:
    """One stage's files uploaded to a worker and loaded there; called with bytes frames."""

    def __init__(self, session, folder: Path, name: str) -> None:
        from compiler.stages import pack_arrays, unpack_arrays

        self._pack, self._unpack = pack_arrays, unpack_arrays
        manifest = read_manifest(folder, verify=False)  # verified with the whole artifact
        self.input_names = [s["name"] for s in manifest["inputs"]]
        for file in _STAGE_FILES:
            session.upload(str(folder / file), f"{name}-{file}")
        self.handle = session.get_function("compiler.stage.load")(name)
        self._run = session.get_function("compiler.stage.run")

    def __call__(self, env: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        frame = self._pack({n: np.asarray(env[n]) for n in self.input_names})
        _, arrays = self._unpack(bytes(self._run(self.handle, frame)))
        return {name: np.array(a) for name, a in arrays.items()}


class RemotePipeline:
    """A partitioned artifact whose stages run on RPC workers, micro-batches overlapping.

    ``sessions``: one TVM RPC session per stage (from :func:`request` or :func:`connect`), or
    use :meth:`from_tracker`. Each stage's library and weights are uploaded to its worker. A
    thread per stage drives its session, so micro-batch ``i`` runs on stage 1 while ``i + 1``
    runs on stage 0.
    """

    def __init__(self, path: str | os.PathLike, sessions: Sequence[Any]) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        stages = self.manifest.get("stages")
        if not stages:
            raise ArtifactError(f"{self.path}: not a partitioned artifact (build with `partition`)")
        if len(sessions) != len(stages):
            raise InputError(
                f"{len(stages)} stages need {len(stages)} sessions, got {len(sessions)}"
            )
        self.stages_info = stages
        self.output_names = [o["name"] for o in self.manifest["outputs"]]
        self.input_names = [i["name"] for i in self.manifest["inputs"]]
        try:
            self.stages = [
                _RemoteStage(session, self.path / info["path"], f"stage{info['index']}")
                for session, info in zip(sessions, stages, strict=True)
            ]
        except CompilerError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RpcError(f"{self.path}: loading a stage on its RPC worker failed: {first}") from e

    @classmethod
    def from_tracker(
        cls, path: str | os.PathLike, tracker: tuple[str, int], key: str, *, timeout: float = 60
    ) -> RemotePipeline:
        """Requests one worker per stage from the tracker (distinct workers, all at once)."""
        count = len(read_manifest(path, verify=False).get("stages") or [])
        sessions = [request(*tracker, key, timeout=timeout) for _ in range(count)]
        return cls(path, sessions)

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.run_many([inputs])[0]

    def run_many(self, feeds: Iterable[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
        """Runs each feed through the stages, one thread per stage; outputs in feed order."""
        feeds = [dict(f) for f in feeds]
        from compiler.runtime import require_inputs

        for f in feeds:
            require_inputs(f, self.input_names)
        links: list[queue.Queue] = [queue.Queue() for _ in range(len(self.stages) + 1)]
        errors: list[str] = []

        def drive(index: int) -> None:
            stage, inbox, outbox = self.stages[index], links[index], links[index + 1]
            while (item := inbox.get()) is not None:
                seq, env = item
                if not errors:
                    try:
                        env = {**env, **stage(env)}
                    except Exception as e:
                        errors.append(f"stage {index}: {str(e).strip().splitlines()[0]}")
                outbox.put((seq, env))
            outbox.put(None)

        threads = [
            threading.Thread(target=drive, args=(i,), daemon=True) for i in range(len(self.stages))
        ]
        for thread in threads:
            thread.start()
        for seq, env in enumerate(feeds):
            links[0].put((seq, env))
        links[0].put(None)
        results = {}
        while (item := links[-1].get()) is not None:
            seq, env = item
            results[seq] = {n: env[n] for n in self.output_names if n in env}
        for thread in threads:
            thread.join()
        if errors:
            raise RpcError(f"a remote stage failed: {errors[0]}")
        return [results[i] for i in range(len(feeds))]
