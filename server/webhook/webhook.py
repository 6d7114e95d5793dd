"""`nodecompat webhook`: the Kubernetes admission webhook server (HTTPS, admission.k8s.io/v1).

POST /mutate and /validate take an AdmissionReview for a Pod CREATE and answer with the same uid; GET
/healthz answers "ok" whatever else is happening. Per image (containers and initContainers) the
compatibility artifact is resolved through nodecompat.oci's SpecCache (tags for 30 s, specs by artifact
digest, both LRU-bounded; the registry allow-list `--allowed-registries` is nodecompat.oci.policy's, checked
before any connection), the aggregator is asked which nodes fit (FleetService.ValidateFleet with the spec
inline, on one grpc.aio channel), and nodecompat.admission decides.

Hostile callers: the body is bounded (aiohttp client_max_size -> 413), JSON depth and field types are
checked (400), and every request runs under one deadline (`--deadline`, default 8 s, below the API
server's 10 s webhook timeout) that the request cannot stretch: the API server's own `?timeout=` can only
shorten it. Connections are bounded too, before any request exists: the TLS handshake must end within
`handshake_timeout` (asyncio's ssl_handshake_timeout; its default is 60 s) and a connection's request headers
must be complete within `header_timeout` of its start or of its previous answer (aiohttp's keep-alive
timer, which fires while the connection waits for a whole request; aiohttp's default is 3,630 s, so a
slowloris peer trickling header bytes held a connection for an hour). Registry reads run on a bounded
thread pool (they use `requests`); a read that passes the deadline is abandoned and stops at its own
budget. aiohttp serves HTTP because it is a maintained asyncio server and the aggregator client is
grpc.aio on the same loop. The serving certificate is reloaded when its files change (server/webhook/webhook_tls.py,
--tls-reload-interval), so a cert-manager renewal needs no restart.

Overload: at most `max_concurrent_requests` (--max-concurrent-requests, default 32) admission reviews are
handled at once, counted from the handler's start to its answer; the next one is answered at once with
HTTP 503 and no body read. Why 503 and not a 200 AdmissionReview per --failure-policy: an AdmissionReview
answer must carry the request's uid, so it would mean reading and parsing up to 3 MiB per refused request,
the very work being shed. The API server counts any non-200 answer as a failed webhook call and applies
the WebhookConfiguration's failurePolicy (which deploy/ sets to match --failure-policy): Fail rejects the
pod saying the webhook failed, Ignore admits it. No Retry-After header is sent, so client-go's REST client
(rest/request.go checkWait: 429 or 5xx *with* Retry-After) does not retry into an overloaded webhook
within the same timeoutSeconds. A slot cannot be held past the deadline: the body must arrive within the
request's deadline (counted from the handler's start, not stretched by bytes trickling in; HTTP 408), and
the answer is computed within what is left of it. /healthz takes no slot.

Parsing (server/webhook/webhook_parse.py): bodies over 64 KiB are parsed in 2 worker processes (json.loads of a
3 MiB review holds the GIL ~100 ms); small bodies (every real pod we have seen) inline. A worker that dies
is replaced and its review answered 503; the workers leave process-group signals to the webhook, which
joins them at shutdown.

Fan-out: a pod may name up to 256 images (nodecompat.admission.review.MAX_CONTAINERS). They are
deduplicated first (parse_review keeps each distinct reference once), then resolved and sent to the
aggregator at most `image_concurrency` (default 8) at a time per review, all under the review's one
deadline: images still queued when it passes are answered as not checked, per --failure-policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web

from nodecompat.admission import review as rv
from nodecompat.admission.decide import FAIL, ImageAnswer, Policy, decide
from nodecompat.engine.spec import Spec, SpecError, parse_spec
from nodecompat.oci.auth import RegistryAuth
from nodecompat.oci.cache import SpecCache
from nodecompat.oci.errors import NotFoundError, RegistryError
from nodecompat.oci.policy import RegistryPolicy
from nodecompat.server.webhook.webhook_fleet import validate_fleet
from nodecompat.server.webhook.webhook_parse import ReviewParser
from nodecompat.server.webhook.webhook_tls import DEFAULT_RELOAD_INTERVAL, CertReloader, aggregator_unreachable_hint
from nodecompat.translate.common import dns_name
from nodecompat.v1 import fleet_pb2_grpc

log = logging.getLogger("nodecompat.webhook")

DEFAULT_DEADLINE = 8.0
MAX_PARSED_SPECS = 128  # parsed specs kept by artifact digest (the texts are in SpecCache)
REGISTRY_THREADS = 8
HANDSHAKE_TIMEOUT = 5.0  # seconds for a TLS handshake (the API server's takes milliseconds)
MAX_CONCURRENT_REQUESTS = 32  # reviews handled at once (each may hold a 3 MiB body and its parsed pod)
IMAGE_CONCURRENCY = 8  # images of one review resolved / sent to the aggregator at once
HEADER_TIMEOUT = 10.0  # seconds for a whole request head, counted from connect or from the last answer
_TIMEOUT_RE = re.compile(r"^(\d{1,3})s$")


@dataclass
class WebhookConfig:
    listen_host: str
    listen_port: int
    tls_cert: str
    tls_key: str
    aggregator: str
    aggregator_credentials: grpc.ChannelCredentials | None = None
    policy: RegistryPolicy = field(default_factory=RegistryPolicy)
    plain_http: bool = False
    ca_file: str | None = None
    failure_policy: str = FAIL
    deadline: float = DEFAULT_DEADLINE
    max_node_names: int = 500
    deny_when_no_fit: bool = False
    nfd_labels: bool = False
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    header_timeout: float = HEADER_TIMEOUT
    max_concurrent_requests: int = MAX_CONCURRENT_REQUESTS
    image_concurrency: int = IMAGE_CONCURRENCY
    tls_reload_interval: float = DEFAULT_RELOAD_INTERVAL  # seconds between looks at the cert/key files
    registry_auth: RegistryAuth | None = None  # credentials for the registries (nodecompat.oci.auth)


class Webhook:
    """The request handlers and their shared, bounded state (caches, channel, thread pool)."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.specs = SpecCache()
        self.parsed: OrderedDict[str, Spec] = OrderedDict()
        self.pool = ThreadPoolExecutor(REGISTRY_THREADS, thread_name_prefix="webhook-registry")
        self.channel: grpc.aio.Channel | None = None
        self.parser = ReviewParser()
        # per request in flight (keyed by its stages dict): the slowest registry / aggregator wait, seconds
        self.timings: dict[int, dict[str, float]] = {}
        self.in_flight = 0  # reviews being handled (the event loop is the only writer)
        self.shed = 0  # reviews refused with 503 since start

    # -- lifecycle ---------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=rv.MAX_REVIEW_BYTES)
        app.router.add_post("/mutate", self.mutate)
        app.router.add_post("/validate", self.validate)
        app.router.add_get("/healthz", self.healthz)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._close)
        return app

    def stub(self) -> fleet_pb2_grpc.FleetServiceStub:
        if self.channel is None:
            creds = self.config.aggregator_credentials
            self.channel = (
                grpc.aio.secure_channel(self.config.aggregator, creds)
                if creds is not None
                else grpc.aio.insecure_channel(self.config.aggregator)
            )
        return fleet_pb2_grpc.FleetServiceStub(self.channel)

    async def _start(self, _app: web.Application) -> None:
        self.parser.start()

    async def _close(self, _app: web.Application) -> None:
        if self.channel is not None:
            await self.channel.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        await self.parser.close()

    async def parse(self, body: bytes) -> rv.PodReview:
        """The review in `body` (webhook_parse.ReviewParser.parse: large bodies in a worker process)."""
        return await self.parser.parse(body)

    # -- handlers ------------------------------------------------------------------------------------------
    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def mutate(self, request: web.Request) -> web.Response:
        return await self._handle(request, mutate=True)

    async def validate(self, request: web.Request) -> web.Response:
        return await self._handle(request, mutate=False)

    def _deadline(self, request: web.Request) -> float:
        deadline = self.config.deadline
        m = _TIMEOUT_RE.match(request.query.get("timeout", ""))
        if m:  # the API server's own timeout (?timeout=10s) can shorten ours, never lengthen it
            deadline = min(deadline, max(0.5, int(m.group(1)) - 1.0))
        return deadline

    async def _handle(self, request: web.Request, *, mutate: bool) -> web.Response:
        if self.in_flight >= self.config.max_concurrent_requests:
            self.shed += 1
            if self.shed == 1 or self.shed % 100 == 0:
                log.warning("overloaded: %d reviews in flight; %d refused with 503 so far", self.in_flight, self.shed)
            return _json(
                {"error": f"nodecompat webhook is handling {self.in_flight} reviews (--max-concurrent-requests)"},
                status=503,
            )
        self.in_flight += 1
        try:
            return await self._handle_one(request, mutate=mutate)
        finally:
            self.in_flight -= 1

    async def _handle_one(self, request: web.Request, *, mutate: bool) -> web.Response:
        started = time.monotonic()
        budget = self._deadline(request)
        try:
            async with asyncio.timeout(budget):
                body = await request.read()
        except TimeoutError:
            return _json({"error": "the request body did not arrive before the deadline"}, status=408)
        try:
            async with asyncio.timeout(max(0.1, budget - (time.monotonic() - started))):
                review = await self.parse(body)
        except rv.ReviewError as exc:
            return _json({"error": str(exc)}, status=400)
        except (TimeoutError, BrokenProcessPool):
            log.warning("a %d-byte review was not parsed within the deadline or its worker died", len(body))
            return _json({"error": "the review could not be parsed in time; retry"}, status=503)
        if not review.is_pod_create or review.skip:
            return _json(rv.response(review.uid, True))
        policy = Policy(
            mutate=mutate,
            deny_when_no_fit=self.config.deny_when_no_fit,
            failure_policy=self.config.failure_policy,
            max_node_names=self.config.max_node_names,
            nfd_labels=self.config.nfd_labels,
        )
        remaining = budget - (time.monotonic() - started)
        stages = dict.fromkeys(review.images, "registry")
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                answers = await self._answers(review.images, started + budget, stages)
        except TimeoutError:
            answers = [
                ImageAnswer(img, "error", error=f"no answer from the {stages[img]} within the {budget:g} s deadline")
                for img in review.images
            ]
        took = self.timings.pop(id(stages), {})
        decision = decide(review.pod, answers, policy)
        log.info(
            "%s uid=%s images=%d allowed=%s dryRun=%s in %.1f ms (registry %.1f ms, aggregator %.1f ms)",
            "mutate" if mutate else "validate",
            review.uid,
            len(review.images),
            decision.allowed,
            review.dry_run,
            (time.monotonic() - started) * 1000,
            took.get("registry", 0.0) * 1000,
            took.get("aggregator", 0.0) * 1000,
        )
        return _json(
            rv.response(
                review.uid,
                decision.allowed,
                message=decision.message,
                code=decision.code,
                patch=decision.patch if mutate else None,
                warnings=decision.warnings,
            )
        )

    # -- per image -----------------------------------------------------------------------------------------
    async def _answers(self, images: list[str], deadline: float, stages: dict[str, str]) -> list[ImageAnswer]:
        """One answer per image, in order; at most config.image_concurrency images in progress at once
        (`images` is already deduplicated by parse_review). The caller's timeout bounds the whole set."""
        gate = asyncio.Semaphore(max(1, self.config.image_concurrency))

        async def one(img: str) -> ImageAnswer:
            async with gate:
                return await self._answer(img, deadline, stages)

        return list(await asyncio.gather(*(one(img) for img in images)))

    async def _answer(self, image: str, deadline: float, stages: dict[str, str]) -> ImageAnswer:
        """One image's answer; `stages[image]` names the peer being waited for (for the deadline's message)."""
        loop = asyncio.get_running_loop()
        t_start = time.monotonic()
        remaining = deadline - t_start
        try:
            fetched = await loop.run_in_executor(
                self.pool,
                lambda: self.specs.fetch(
                    image,
                    plain_http=self.config.plain_http,
                    auth=self.config.registry_auth,
                    ca_file=self.config.ca_file,
                    timeout=max(0.1, remaining),
                    policy=self.config.policy,
                ),
            )
        except NotFoundError as exc:
            if str(exc).startswith("no compatibility artifact"):
                return ImageAnswer(image, "no-artifact")
            return ImageAnswer(image, "error", error=f"registry: {exc}")
        except RegistryError as exc:
            return ImageAnswer(image, "error", error=f"registry: {exc}")
        try:
            spec = self._parsed(fetched.artifact_digest, fetched.text)
        except SpecError as exc:
            return ImageAnswer(image, "error", error=f"its compatibility spec is invalid: {str(exc)[:300]}")
        answer = ImageAnswer(
            image,
            "fit",
            image_digest=fetched.image_digest,
            artifact_digest=fetched.artifact_digest,
            spec=spec,
            spec_name=dns_name(image.split("@")[0].rsplit("/", 1)[-1].split(":")[0], "image"),
        )
        stages[image] = "aggregator"
        t_registry = time.monotonic()
        took = self.timings.setdefault(id(stages), {})
        took["registry"] = max(took.get("registry", 0.0), t_registry - t_start)
        remaining = deadline - t_registry
        try:
            answer.nodes, answer.why_not = await validate_fleet(self.stub(), fetched.text, remaining)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            hint = aggregator_unreachable_hint(details, self.config.aggregator_credentials is not None)
            return ImageAnswer(image, "error", error=f"aggregator: {exc.code().name}: {details[:300]}{hint}")
        took = self.timings.setdefault(id(stages), {})
        took["aggregator"] = max(took.get("aggregator", 0.0), time.monotonic() - t_registry)
        return answer

    def _parsed(self, digest: str, text: str) -> Spec:
        spec = self.parsed.get(digest)
        if spec is None:
            spec = parse_spec(text)
            self.parsed[digest] = spec
            while len(self.parsed) > MAX_PARSED_SPECS:
                self.parsed.popitem(last=False)
        else:
            self.parsed.move_to_end(digest)
        return spec


def _json(body: Any, status: int = 200) -> web.Response:
    """A JSON answer ending in a newline (for people reading it with curl)."""
    return web.Response(text=json.dumps(body) + "\n", status=status, content_type="application/json")


async def serve(config: WebhookConfig, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or forever)."""
    hook = Webhook(config)
    runner = web.AppRunner(
        hook.app(), access_log=None, handle_signals=False, shutdown_timeout=2.0,
        keepalive_timeout=config.header_timeout,
    )
    await runner.setup()
    assert runner.server is not None
    # loop.create_server rather than web.TCPSite: TCPSite passes no ssl_handshake_timeout.
    listener = await asyncio.get_running_loop().create_server(
        runner.server,
        config.listen_host,
        config.listen_port,
        ssl=CertReloader(config.tls_cert, config.tls_key, config.tls_reload_interval).listening_context(),
        ssl_handshake_timeout=config.handshake_timeout,
        backlog=256,
        reuse_address=True,
    )
    if ready is not None:
        ready.set()
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        listener.close()
        with contextlib.suppress(Exception):
            await runner.cleanup()


def to_answer_dict(a: ImageAnswer) -> dict[str, Any]:
    """For logs and the affinity command: one image's answer as plain data."""
    return {"image": a.image, "state": a.state, "error": a.error, "fitting": sorted(a.fitting()), "total": len(a.nodes)}
