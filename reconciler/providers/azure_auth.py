"""How the azure-openai provider authenticates to ARM, and keeps one writer per account.

Authentication: an Entra ID token for https://management.azure.com, either

- from `azure-identity`'s DefaultAzureCredential chain (the default when the Provider
  names no `credentials.tokenEnv`): a service principal from AZURE_CLIENT_ID /
  AZURE_TENANT_ID / AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH), workload
  identity federation (AZURE_FEDERATED_TOKEN_FILE, as on AKS), a managed identity (App
  Service, Functions, Container Apps, a VM), then the Azure CLI's login (how GitHub
  Actions' `azure/login` with OIDC hands one over). Tokens are fetched again five
  minutes before they expire, so a long-running agent keeps working; or
- a static token from the variable `credentials.tokenEnv` names (it expires after
  about an hour: fine for one CI job, not for an agent).

One writer per account: ARM refuses a second write on an account while one runs (409
RequestConflict). Within a process, a lock per account; across processes on one
machine, an exclusive `flock` on a file named after the account in the lock directory
(`<repo>/.reconciler/locks`, or the absolute path in RECONCILER_LOCK_DIR: the
operator's choice, never a manifest's, since a change under review must not choose
where apply creates files). Processes on
other machines (two CI runners) are not serialised by it: their 409s are waited out,
bounded by config.operationTimeoutSeconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import httpx

from reconciler.errors import ProviderError
from reconciler.log import get_logger
from reconciler.redaction import Register

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken

log = get_logger("reconciler.providers.azure")

#: The scope of an ARM token.
ARM_SCOPE = "https://management.azure.com/.default"
#: Fetch a new token this many seconds before the current one expires (azure-core's
#: own BearerTokenCredentialPolicy uses the same margin).
REFRESH_MARGIN = 300.0
#: Seconds between two tries for another process's account lock.
LOCK_POLL = 1.0
#: The environment variable naming the account locks' directory (an absolute path).
LOCK_DIR_ENV = "RECONCILER_LOCK_DIR"


def lock_directory(repo_root: Path, env: Mapping[str, str]) -> Path:
    """Where account locks live: RECONCILER_LOCK_DIR when it is an absolute path (a
    relative one would depend on the working directory: ignored for the default),
    else `<repo>/.reconciler/locks`."""
    value = env.get(LOCK_DIR_ENV, "")
    return Path(value) if value.startswith("/") else repo_root / ".reconciler" / "locks"


class TokenCredential(Protocol):
    """What azure-identity's credentials offer (azure.core.credentials.TokenCredential)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken: ...


def default_credential() -> TokenCredential:
    """azure-identity's DefaultAzureCredential, without the interactive and developer-
    tool credentials a server has no use for (VS Code, PowerShell, azd, the shared
    cache): environment, workload identity, managed identity, Azure CLI."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as e:  # pragma: no cover - a dependency of reconciler
        raise ProviderError(
            f"azure-identity is not installed ({e}); install it, or set credentials.tokenEnv"
        ) from None
    cred: TokenCredential = DefaultAzureCredential(
        exclude_shared_token_cache_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_interactive_browser_credential=True,
    )
    return cred


class CredentialAuth(httpx.Auth):
    """Bearer auth from a TokenCredential, fetched again REFRESH_MARGIN seconds before
    the token expires (by `clock`, epoch seconds, as `expires_on` is). `register` (the
    provider's, handed down from the session) learns each token before it is sent."""

    def __init__(
        self,
        credential: TokenCredential,
        label: str,
        clock: Callable[[], float],
        register: Register,
    ):
        self._credential = credential
        self._register = register
        self._label = label
        self._clock = clock
        self._lock = threading.Lock()
        self._token: AccessToken | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or self._token.expires_on - now <= REFRESH_MARGIN:
                why = "first request" if self._token is None else "the token expires soon"
                self._token = self._fetch()
                log.info(
                    "azure.token",
                    provider=self._label,
                    why=why,
                    expires_in=round(self._token.expires_on - now),
                )
            return self._token.token

    def _fetch(self) -> AccessToken:
        try:
            token = self._credential.get_token(ARM_SCOPE)
        except Exception as e:  # azure-identity raises its own kinds; any is a failure here
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ProviderError(
                f"{self._label}: no Azure token from {type(self._credential).__name__}: {first}",
                details=str(e),
            ) from None
        self._register([token.token])
        return token


class AccountLocks:
    """One writer per ARM account: a thread lock in this process, an exclusive flock in
    `directory` across processes on this machine. Waiting for another process is bounded
    by `timeout` seconds and paced by `sleep` (tests inject both)."""

    _guard: ClassVar[threading.Lock] = threading.Lock()
    _threads: ClassVar[dict[str, threading.Lock]] = {}

    def __init__(
        self,
        directory: Path,
        *,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.directory = directory
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def thread_lock(cls, key: str) -> threading.Lock:
        with cls._guard:
            return cls._threads.setdefault(key, threading.Lock())

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.directory / f"azure-account-{digest}.lock"

    @contextlib.contextmanager
    def hold(self, key: str, account: str, timeout: float, label: str) -> Iterator[None]:
        key = key.lower()
        with self.thread_lock(key), self._file_lock(key, account, timeout, label):
            yield

    @contextlib.contextmanager
    def _file_lock(self, key: str, account: str, timeout: float, label: str) -> Iterator[None]:
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ProviderError(
                f"{label}: cannot open the write lock of account {account!r} at {path}: "
                f"{e.strerror} ({LOCK_DIR_ENV})"
            ) from None
        try:
            started = self._clock()
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self._clock() - started + LOCK_POLL > timeout:
                        raise ProviderError(
                            f"{label}: another process kept writing to account {account!r} "
                            f"for over {timeout:g}s (config.operationTimeoutSeconds; its "
                            f"lock is {path}); nothing was changed"
                        ) from None
                    if not waited:
                        log.info(
                            "azure.account_lock.wait",
                            provider=label,
                            account=account,
                            why="another process is writing to this account",
                        )
                        waited = True
                    self._sleep(LOCK_POLL)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
