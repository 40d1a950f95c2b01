"""Run the cases against a target profile and collect their results.

The runner starts the kit's own parties (``LocalIssuer`` at the profile's bind address, and the
SPIFFE bundle endpoint when the target supports SPIFFE), runs every case in a fixed order, and
turns each into a ``CaseResult``. A case that raises anything other than ``CaseFailure`` or
``CaseSkip`` is an ``error``: a bug in the kit or a broken connection, counted like a failure.
Every case behind a sanity gate (``conformance.gate``) runs only once its positive twin passed;
otherwise it is ``inconclusive``. ``--fail-on`` decides which failures fail the run
(``conformance.verdict``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from conformance.cases import Case, CaseFailure, CaseSkip, Context, all_cases
from conformance.cases.base import TargetUnreachable, missing_needs
from conformance.client_assertion import ensure_client_key, write_public_jwks
from conformance.client_tls import TLS_METHODS, ensure_client_certificate, ensure_impostor
from conformance.gate import GATES, advice, gate_of, inconclusive_message
from conformance.issuer import LocalIssuer, SpiffeBundleServer, server_tls_context
from conformance.profile import Profile
from conformance.tls import issuer_tls_context
from conformance.verdict import FailOn, counted, exit_code

Outcome = Literal["pass", "fail", "skip", "error", "inconclusive"]
OUTCOMES: tuple[Outcome, ...] = ("pass", "fail", "skip", "error", "inconclusive")

#: Algorithms the kit may publish as "a key the target must refuse", in order of preference.
_EXTRA_ALGORITHMS = ("PS256", "RS384", "ES384", "EdDSA", "RS512")


@dataclass(frozen=True)
class CaseResult:
    id: str
    source: str
    level: str
    title: str
    outcome: Outcome
    message: str = ""
    duration: float = 0.0

    @property
    def failed(self) -> bool:
        return self.outcome in ("fail", "error")


@dataclass
class RunReport:
    profile_name: str
    token_endpoint: str
    started_at: float
    duration: float = 0.0
    results: list[CaseResult] = field(default_factory=list)
    fail_on: FailOn = "must"
    #: Gate name -> what to fix, for every sanity gate whose positive twin did not pass.
    gate_failures: dict[str, str] = field(default_factory=dict)

    @property
    def must_failures(self) -> list[CaseResult]:
        return [r for r in self.results if r.level == "MUST" and r.failed]

    @property
    def counted_failures(self) -> list[CaseResult]:
        """Failures that fail the run under ``fail_on``."""
        return [r for r in self.results if counted(r, self.fail_on)]

    @property
    def uncounted_failures(self) -> list[CaseResult]:
        """Failures reported but not counted under ``fail_on``."""
        return [r for r in self.results if r.failed and not counted(r, self.fail_on)]

    @property
    def inconclusive(self) -> list[CaseResult]:
        return [r for r in self.results if r.outcome == "inconclusive"]

    def counts_as_failure(self, result: CaseResult) -> bool:
        return counted(result, self.fail_on)

    @property
    def exit_code(self) -> int:
        """0 conformant, 1 a failure counted under ``fail_on``, 3 inconclusive (a gate failed)."""
        return exit_code(self.results, self.fail_on)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.results:
            row = out.setdefault(r.level, dict.fromkeys(OUTCOMES, 0))
            row[r.outcome] += 1
        return out

    def to_dict(self) -> dict[str, object]:
        return {"profile": self.profile_name, "token_endpoint": self.token_endpoint,
                "started_at": self.started_at, "duration": round(self.duration, 3),
                "fail_on": self.fail_on, "exit_code": self.exit_code, "counts": self.counts(),
                "gate_failures": dict(self.gate_failures),
                "results": [{**asdict(r), "counted": counted(r, self.fail_on)} for r in self.results]}


def select(cases: Iterable[Case], only: Sequence[str] | None) -> list[Case]:
    """Cases whose id matches one of the ``only`` glob patterns (all when none is given)."""
    if not only:
        return list(cases)
    return [c for c in cases if any(fnmatch.fnmatchcase(c.id, pat) for pat in only)]


def disallowed_algorithm(profile: Profile, available: Sequence[str] | None = None) -> str | None:
    """An algorithm the kit can publish a key for and the target does not accept."""
    pool = available if available is not None else _EXTRA_ALGORITHMS
    for alg in pool:
        if alg not in profile.issuer.algorithms:
            return alg
    return None


def make_issuer(profile: Profile) -> LocalIssuer:
    """The kit's issuer for ``profile``: the accepted algorithms plus one the target must refuse."""
    extra = disallowed_algorithm(profile)
    algorithms = [*profile.issuer.algorithms, *([extra] if extra else [])]
    p = profile.issuer
    tls = issuer_tls_context(p.tls_cert_file, p.tls_key_file, p.tls_ca_file, p.host)
    issuer = LocalIssuer(host=p.host, port=p.port, algorithms=algorithms, tls=tls, path=p.path)
    keys = profile.issuer.private_keys_file
    if keys:
        if Path(keys).exists():
            issuer.load_keys(keys)
        else:
            issuer.save_keys(keys)
    return issuer


def prepare(profile: Profile) -> LocalIssuer:
    """Create (or load) the kit's keys and write the files a target is configured with: the
    issuer's public JWKS (static deployments), its TLS CA, the client's public JWKS."""
    issuer = make_issuer(profile)
    if profile.issuer.jwks_file:
        issuer.write_jwks(profile.issuer.jwks_file)
    c = profile.client
    if c.auth in TLS_METHODS and c.tls_cert_file and c.tls_key_file and c.id:
        ensure_client_certificate(c.tls_cert_file, c.tls_key_file, c.id)
        ensure_impostor(c.tls_cert_file, *c.impostor_files())
    if c.auth == "private_key_jwt" and c.private_key_file:
        kid, key = ensure_client_key(c.private_key_file, c.assertion_alg)
        if c.jwks_file:
            write_public_jwks(c.jwks_file, kid, key, c.assertion_alg)
    return issuer


def warm_up(ctx: Context) -> bool:
    """Wait (up to ``issuer.rotation_wait``) until the target accepts a valid subject token.

    The kit's keys are new on every run. A target that cached the previous run's keys, or that
    rate-limits refetching an issuer's JWKS, needs a moment to see them; without this wait the
    first cases of a run would fail for a reason that is not theirs. Returns False if the target
    never accepted one (the cases then report why).
    """
    if not ctx.profile.mints_subjects:
        return True
    deadline = time.monotonic() + ctx.profile.issuer.rotation_wait
    while True:
        try:
            reply = ctx.exchange()
        except (TargetUnreachable, CaseFailure, CaseSkip):
            return False
        if reply.status == 200 or reply.error != "invalid_request" or time.monotonic() >= deadline:
            return reply.status == 200
        time.sleep(0.5)


def run_case(c: Case, ctx: Context) -> CaseResult:
    started = time.perf_counter()
    reason = missing_needs(c, ctx.profile)
    if reason is not None:
        return CaseResult(c.id, c.source, c.level, c.title, "skip", reason)
    outcome: Outcome
    try:
        c.func(ctx)
        outcome, message = "pass", ""
    except CaseSkip as exc:
        outcome, message = "skip", str(exc)
    except CaseFailure as exc:
        outcome, message = "fail", str(exc)
    except TargetUnreachable as exc:
        outcome, message = "error", str(exc)
    except Exception as exc:  # noqa: BLE001 - any other exception is reported, not raised
        outcome, message = "error", f"{type(exc).__name__}: {exc}"
    return CaseResult(c.id, c.source, c.level, c.title, outcome, message, time.perf_counter() - started)


class Gatekeeper:
    """Runs cases behind their sanity gates: a gate's twin first, once, and its dependants only
    when it passed (``inconclusive`` otherwise). One per session."""

    def __init__(self, ctx: Context, cases: Iterable[Case] | None = None) -> None:
        self.ctx = ctx
        self._cases = {c.id: c for c in (all_cases() if cases is None else cases)}
        self._twin_results: dict[str, CaseResult] = {}
        #: Gate name -> advice, for gates that did not open.
        self.failures: dict[str, str] = {}

    def _open(self, gate: str) -> bool:
        return self._twin(gate).outcome == "pass"

    def _twin(self, gate: str) -> CaseResult:
        g = GATES[gate]
        if g.twin not in self._twin_results:
            twin = self._cases[g.twin]
            if g.after is not None and missing_needs(twin, self.ctx.profile) is None and not self._open(g.after):
                result = CaseResult(twin.id, twin.source, twin.level, twin.title, "inconclusive",
                                    inconclusive_message(g.after))
            else:
                result = run_case(twin, self.ctx)
            skipped_by_profile = result.outcome == "skip" and missing_needs(twin, self.ctx.profile) is not None
            if result.outcome in ("fail", "error", "skip") and not skipped_by_profile:
                self.failures[gate] = advice(gate, self.ctx.profile, self.ctx.issuer.url, result.message)
            self._twin_results[g.twin] = result
        return self._twin_results[g.twin]

    def run(self, c: Case) -> CaseResult:
        if any(c.id == g.twin for g in GATES.values()):
            return self._twin(next(name for name, g in GATES.items() if g.twin == c.id))
        reason = missing_needs(c, self.ctx.profile)
        gate = gate_of(c.id)
        if reason is None and gate is not None and not self._open(gate):
            return CaseResult(c.id, c.source, c.level, c.title, "inconclusive", inconclusive_message(gate))
        return run_case(c, self.ctx)


def target_http_client(profile: Profile, certificate: tuple[str, str] | None | bool = True) -> httpx.Client:
    """HTTP to the target: no redirects, no proxies from the environment, the profile's CA.

    ``certificate``: the TLS client certificate to present: True for the profile's own (mTLS
    client authentication), None for none, or a (cert file, key file) pair."""
    c = profile.client
    if certificate is True:
        certificate = (c.tls_cert_file, c.tls_key_file) if c.auth in TLS_METHODS and c.tls_cert_file and c.tls_key_file else None
    if not profile.target.ca_file and certificate is None:
        return httpx.Client(follow_redirects=False, trust_env=False)
    ctx = ssl.create_default_context(cafile=profile.target.ca_file) if profile.target.ca_file else ssl.create_default_context()
    if isinstance(certificate, tuple):
        ctx.load_cert_chain(certificate[0], certificate[1])
    return httpx.Client(follow_redirects=False, trust_env=False, verify=ctx)


@contextlib.contextmanager
def session(profile: Profile, *, issuer: LocalIssuer | None = None,
            spiffe: SpiffeBundleServer | None = None) -> Iterator[Context]:
    """A ``Context`` for ``profile`` with the kit's parties running, torn down on exit.

    ``issuer``/``spiffe`` let a caller (the kit's own tests) share running servers between runs;
    otherwise they are started here at the profile's bind addresses and stopped at the end.
    """
    own_issuer = issuer is None
    own_spiffe = spiffe is None and profile.choices.supports_spiffe
    if issuer is None:
        issuer = prepare(profile)
        issuer.start()
        extra = disallowed_algorithm(profile)
    else:
        extra = disallowed_algorithm(profile, [a for a in issuer.algorithms if a not in profile.issuer.algorithms])
    http = target_http_client(profile)
    ctx: Context | None = None
    try:
        if own_spiffe:
            p = profile.spiffe
            tls = server_tls_context(p.tls_cert_file, p.tls_key_file) if p.tls_cert_file and p.tls_key_file else None
            spiffe = SpiffeBundleServer(p.trust_domain, host=p.host, port=p.port, tls=tls).start()
        ctx = Context(profile=profile, issuer=issuer, spiffe=spiffe, http=http, disallowed_algorithm=extra,
                      http_for=lambda certificate: target_http_client(profile, certificate))
        warm_up(ctx)
        yield ctx
    finally:
        http.close()
        if ctx is not None:
            ctx.close_extra_clients()
        if own_issuer:
            issuer.stop()
        if own_spiffe and spiffe is not None:
            spiffe.stop()


def run(profile: Profile, *, only: Sequence[str] | None = None, issuer: LocalIssuer | None = None,
        spiffe: SpiffeBundleServer | None = None, fail_on: FailOn = "must",
        progress: Callable[[CaseResult], None] | None = None) -> RunReport:
    """Run the selected cases against ``profile``'s target and return the report."""
    report = RunReport(profile.name, profile.target.token_endpoint, time.time(), fail_on=fail_on)
    started = time.perf_counter()
    with session(profile, issuer=issuer, spiffe=spiffe) as ctx:
        gatekeeper = Gatekeeper(ctx)
        for c in select(all_cases(), only):
            result = gatekeeper.run(c)
            report.results.append(result)
            if progress is not None:
                progress(result)
        report.gate_failures = dict(gatekeeper.failures)
    report.duration = time.perf_counter() - started
    return report
