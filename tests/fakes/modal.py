"""A Modal control-plane stand-in on 127.0.0.1: a real gRPC server (grpclib, HTTP/2)
built on the SDK's own servicer base class, `modal_proto.api_grpc.ModalClientBase`, so
the real `modal` SDK (1.6.4) talks to it unchanged when pointed at its URL.

It answers the calls the SDK makes for what reconciler does, with the messages the SDK
reads (modal_proto/api.proto):

    ClientHello                     opening a client
    AppGetOrCreate                  `App.lookup(name, environment_name=...)`: a deployed
                                    app by name; NOT_FOUND when there is none (a stopped
                                    app's name no longer resolves, as on Modal);
                                    `App.lookup("ap-…")`: an app by id, in any state
    AppGetInfo                      `App.info(refresh=True)`: lifecycle (state) by app id,
                                    stopped apps included
    AppGetTags / AppSetTags         `App.get_tags()` / `App.set_tags()` (the whole set)
    FunctionGet                     `Function.from_name(app, name)`: NOT_FOUND for a
                                    missing app or function
    FunctionGetSchedulingParams     `Function.autoscaler.settings()`
    FunctionUpdateSchedulingParams  `Function.autoscaler.update(...)`: the fields set in
                                    the request override the function's settings
    AppStop                         `App.stop()`

Every call must carry a known token in the SDK's metadata (`x-modal-token-id`,
`x-modal-token-secret`), else UNAUTHENTICATED. Refused as Modal refuses: an app or
function that is not deployed (NOT_FOUND), a scaledown window outside 2..3600 s, a
min above max containers, or tags outside Modal's character set and length
(INVALID_ARGUMENT). Any other call answers UNIMPLEMENTED, so a provider that strays
from these is noticed.

Test controls: `deploy` (what `modal deploy` would leave), `app`, `function`,
`stop_after_next_update`, `throttle_next` (RESOURCE_EXHAUSTED with Modal's
`RPCRetryPolicy` detail, which the SDK waits out itself), `tamper`, `calls`, `writes`.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import empty_pb2
from grpclib import GRPCError, Status
from grpclib.server import Server, Stream
from modal._utils.grpc_utils import CustomProtoStatusDetailsCodec
from modal_proto import api_grpc, api_pb2

APP_ID = re.compile(r"ap-[a-zA-Z0-9]{22}")
TAG = re.compile(r"[a-zA-Z0-9._-]{1,63}")
WRITES = ("AppSetTags", "FunctionUpdateSchedulingParams", "AppStop")


@dataclass
class FakeFunction:
    function_id: str
    name: str
    #: What the decorator said at deploy time (a redeploy resets the override to it).
    static: dict[str, int]
    override: dict[str, int] = field(default_factory=dict)

    def current(self) -> dict[str, int]:
        return {**self.static, **self.override}


@dataclass
class FakeApp:
    app_id: str
    name: str
    environment: str
    state: int = api_pb2.APP_STATE_DEPLOYED
    version: int = 1
    tags: dict[str, str] = field(default_factory=dict)
    functions: dict[str, FakeFunction] = field(default_factory=dict)


STATIC = {"min_containers": 0, "max_containers": 0, "buffer_containers": 0, "scaledown_window": 60}


def _settings(values: dict[str, int]) -> api_pb2.AutoscalerSettings:
    return api_pb2.AutoscalerSettings(**values)


class _Servicer:
    """The methods the SDK calls; every other method of ModalClientBase is
    UNIMPLEMENTED (filled in by `servicer_class`)."""

    def __init__(self, fake: FakeModal) -> None:
        self.fake = fake

    async def _begin(self, stream: Stream[Any, Any], name: str) -> Any:
        self.fake._check_token(stream.metadata or {})
        self.fake.calls.append(name)
        throttle = self.fake._take_throttle(name)
        if throttle is not None:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                "Too many requests, slow down",
                [api_pb2.RPCRetryPolicy(retry_after_secs=throttle)],
            )
        request = await stream.recv_message()
        return request

    async def ClientHello(self, stream: Stream[Any, Any]) -> None:
        await self._begin(stream, "ClientHello")
        await stream.send_message(api_pb2.ClientHelloResponse())

    def _handle(self, app: FakeApp) -> api_pb2.AppHandleMetadata:
        return api_pb2.AppHandleMetadata(
            app_id=app.app_id,
            environment_name=app.environment,
            description=app.name,
            lifecycle=api_pb2.AppLifecycle(
                app_state=app.state,  # type: ignore[arg-type]
                created_at=1.0,
                created_by="someone",
                deployed_at=2.0,
                deployed_by="someone",
                version=app.version,
                stopped_at=3.0 if app.state == api_pb2.APP_STATE_STOPPED else 0.0,
            ),
            functions={f.name: f.function_id for f in app.functions.values()},
        )

    async def AppGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req = await self._begin(stream, "AppGetOrCreate")
        if req.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
            raise GRPCError(Status.UNIMPLEMENTED, "the stand-in creates no apps")
        if APP_ID.fullmatch(req.app_name):  # `App.lookup("ap-…")`: any state, stopped too
            app = self.fake._by_id(req.app_name)
        else:
            app = self.fake._by_name(req.app_name, req.environment_name)
        await stream.send_message(
            api_pb2.AppGetOrCreateResponse(app_id=app.app_id, handle_metadata=self._handle(app))
        )

    async def AppGetInfo(self, stream: Stream[Any, Any]) -> None:
        req = await self._begin(stream, "AppGetInfo")
        app = self.fake._by_id(req.app_id)
        await stream.send_message(api_pb2.AppGetInfoResponse(info=self._handle(app)))

    async def AppGetTags(self, stream: Stream[Any, Any]) -> None:
        req = await self._begin(stream, "AppGetTags")
        app = self.fake._by_id(req.app_id)
        await stream.send_message(api_pb2.AppGetTagsResponse(tags=app.tags))

    async def AppSetTags(self, stream: Stream[Any, Any]) -> None:
        req = await self._begin(stream, "AppSetTags")
        app = self.fake._by_id(req.app_id)
        for k, v in req.tags.items():
            if not (TAG.fullmatch(k) and TAG.fullmatch(v)):
                raise GRPCError(Status.INVALID_ARGUMENT, f"Invalid tag: {k!r}={v!r}")
        with self.fake.lock:
            app.tags = dict(req.tags)
        await stream.send_message(empty_pb2.Empty())

    async def AppStop(self, stream: Stream[Any, Any]) -> None:
        req = await self._begin(stream, "AppStop")
        app = self.fake._by_id(req.app_id)
        with self.fake.lock:
            app.state = api_pb2.APP_STATE_STOPPED
        await stream.send_message(empty_pb2.Empty())

    async def FunctionGet(self, stream: Stream[Any, Any]) -> None:
        req = await self._begin(stream, "FunctionGet")
        app = self.fake._by_name(req.app_name, req.environment_name)
        fn = app.functions.get(req.object_tag)
        if fn is None:
            raise GRPCError(Status.NOT_FOUND, f"Could not find object with tag '{req.object_tag}'")
        await stream.send_message(
            api_pb2.FunctionGetResponse(
                function_id=fn.function_id,
                handle_metadata=api_pb2.FunctionHandleMetadata(
                    function_name=fn.name,
                    function_type=api_pb2.Function.FUNCTION_TYPE_FUNCTION,
                ),
                function=api_pb2.FunctionData(
                    function_name=fn.name,
                    function_type=api_pb2.Function.FUNCTION_TYPE_FUNCTION,
                    autoscaler_settings=_settings(fn.static),
                    ranked_functions=[
                        api_pb2.FunctionData.RankedFunction(
                            rank=0,
                            function=api_pb2.Function(function_name=fn.name, timeout_secs=300),
                        )
                    ],
                ),
            )
        )

    async def FunctionGetSchedulingParams(self, stream: Stream[Any, Any]) -> None:
        req = await self._begin(stream, "FunctionGetSchedulingParams")
        fn = self.fake._function(req.function_id)
        conf = api_pb2.AutoscalerConfiguration(
            settings=_settings(fn.current()),
            static_settings=_settings(fn.static),
            override_settings=_settings(fn.override),
        )
        await stream.send_message(
            api_pb2.FunctionGetSchedulingParamsResponse(autoscaler_configuration=conf)
        )

    async def FunctionUpdateSchedulingParams(self, stream: Stream[Any, Any]) -> None:
        req = await self._begin(stream, "FunctionUpdateSchedulingParams")
        fn = self.fake._function(req.function_id)
        sent = {f.name: v for f, v in req.settings.ListFields()}
        new = {**fn.current(), **sent}
        window = new.get("scaledown_window", 0)
        if "scaledown_window" in sent and not 2 <= window <= 3600:
            raise GRPCError(
                Status.INVALID_ARGUMENT, "scaledown_window must be between 2 and 3600 seconds"
            )
        top = new.get("max_containers", 0)
        if top and new.get("min_containers", 0) > top:
            raise GRPCError(
                Status.INVALID_ARGUMENT, "min_containers cannot be greater than max_containers"
            )
        with self.fake.lock:
            fn.override.update(sent)
            if self.fake._stop_after_update:
                self.fake._stop_after_update = False
                for app in self.fake.apps.values():
                    if fn in app.functions.values():
                        app.state = api_pb2.APP_STATE_STOPPED
        await stream.send_message(
            api_pb2.FunctionUpdateSchedulingParamsResponse(current_settings=_settings(fn.current()))
        )


def servicer_class() -> type[Any]:
    """_Servicer completed into a ModalClientBase: every abstract method it does not
    define answers UNIMPLEMENTED."""

    def unimplemented(name: str) -> Callable[..., Any]:
        async def method(self: Any, stream: Stream[Any, Any]) -> None:
            raise GRPCError(Status.UNIMPLEMENTED, f"{name} is not implemented by the stand-in")

        return method

    missing = {
        name: unimplemented(name)
        for name in api_grpc.ModalClientBase.__abstractmethods__
        if not hasattr(_Servicer, name)
    }
    return type("FakeModalServicer", (_Servicer, api_grpc.ModalClientBase), missing)


class FakeModal:
    """The stand-in, served from a thread with its own event loop; `url` is what
    `MODAL_SERVER_URL` (or the provider's config.serverUrl) points to."""

    def __init__(self, token_id: str, token_secret: str) -> None:
        self.tokens = {token_id: token_secret}
        self.apps: dict[str, FakeApp] = {}
        self.calls: list[str] = []
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self._throttle: list[tuple[str | None, float]] = []
        self._stop_after_update = False
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    # -- serving -------------------------------------------------------------------------

    def __enter__(self) -> FakeModal:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        port = started.result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _start(self) -> int:
        self._server = Server(
            [servicer_class()(self)], status_details_codec=CustomProtoStatusDetailsCodec()
        )
        await self._server.start("127.0.0.1", 0)
        sockets = self._server._server.sockets if self._server._server else ()  # type: ignore[union-attr]
        return int(sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # -- what the servicer uses ------------------------------------------------------------

    def _check_token(self, metadata: Any) -> None:
        token_id = metadata.get("x-modal-token-id", "")
        secret = metadata.get("x-modal-token-secret", "")
        if not token_id or self.tokens.get(token_id) != secret:
            raise GRPCError(Status.UNAUTHENTICATED, "Token missing or invalid")

    def _take_throttle(self, name: str) -> float | None:
        with self.lock:
            for i, (call, seconds) in enumerate(self._throttle):
                if call in (None, name):
                    del self._throttle[i]
                    return seconds
        return None

    def _by_name(self, name: str, environment: str) -> FakeApp:
        env = environment or "main"
        with self.lock:
            for app in self.apps.values():
                live = app.state not in (api_pb2.APP_STATE_STOPPED, api_pb2.APP_STATE_STOPPING)
                if app.name == name and app.environment == env and live:
                    return app
        raise GRPCError(Status.NOT_FOUND, f"App '{name}' not found in environment '{env}'")

    def _by_id(self, app_id: str) -> FakeApp:
        with self.lock:
            app = self.apps.get(app_id)
        if app is None:
            raise GRPCError(Status.NOT_FOUND, f"App {app_id} not found")
        return app

    def _function(self, function_id: str) -> FakeFunction:
        with self.lock:
            for app in self.apps.values():
                for fn in app.functions.values():
                    if fn.function_id == function_id:
                        return fn
        raise GRPCError(Status.NOT_FOUND, f"Function {function_id} not found")

    # -- test controls --------------------------------------------------------------------

    def deploy(
        self,
        name: str,
        functions: dict[str, dict[str, int]],
        *,
        environment: str = "main",
        tags: dict[str, str] | None = None,
    ) -> FakeApp:
        """What `modal deploy` leaves: a deployed app with these functions and their
        decorator's autoscaler settings. Deploying a name again makes a new version of
        the same app, which resets every function's overrides (Modal's documented
        behaviour) and keeps the tags unless `tags` is given."""
        with self.lock:
            for app in self.apps.values():
                if app.name == name and app.environment == environment:
                    if app.state in (api_pb2.APP_STATE_STOPPED, api_pb2.APP_STATE_STOPPING):
                        continue
                    app.version += 1
                    app.functions = {
                        f: FakeFunction(
                            app.functions[f].function_id
                            if f in app.functions
                            else f"fu-{next(self._ids)}",
                            f,
                            {**STATIC, **s},
                        )
                        for f, s in functions.items()
                    }
                    if tags is not None:
                        app.tags = dict(tags)
                    return app
            app = FakeApp(f"ap-{next(self._ids):022d}", name, environment, tags=dict(tags or {}))
            app.functions = {
                f: FakeFunction(f"fu-{next(self._ids)}", f, {**STATIC, **s})
                for f, s in functions.items()
            }
            self.apps[app.app_id] = app
            return app

    def app(self, name: str, environment: str = "main") -> FakeApp | None:
        """The newest app of that name (stopped ones included)."""
        with self.lock:
            found = [
                a for a in self.apps.values() if a.name == name and a.environment == environment
            ]
        return found[-1] if found else None

    def function(self, app: str, name: str, environment: str = "main") -> FakeFunction:
        found = self.app(app, environment)
        assert found is not None, f"no app {app!r}"
        return found.functions[name]

    def tamper(self, app: str, name: str, **settings: int) -> None:
        """Someone changed the autoscaler by hand (`fn.autoscaler.update(...)`)."""
        with self.lock:
            self.function(app, name).override.update(settings)

    def stop_after_next_update(self) -> None:
        """The app is stopped (`modal app stop`) right after the next settings update."""
        self._stop_after_update = True

    def throttle_next(self, seconds: float, call: str | None = None, times: int = 1) -> None:
        """The next `times` calls (of `call`, or any) are refused with RESOURCE_EXHAUSTED
        and a retry policy asking to wait `seconds`."""
        with self.lock:
            self._throttle.extend([(call, seconds)] * times)

    def writes(self) -> list[str]:
        return [c for c in self.calls if c in WRITES]
