"""The cluster's credentials on disk: a secret and one token per worker id (files mode 0600).

- ``issue_keys``: ``draco-ps keys``: the tokens of ids 0..N-1 from a (new) secret file;
- ``make_credentials``: ``draco-run``: a fresh secret and its tokens in a run directory;
- ``load_tokens``: a ``draco-worker`` process's tokens, ids ``first .. first + count - 1``.

The secret and the tokens themselves: ``draco.net.auth``.
"""

from __future__ import annotations

from pathlib import Path

from draco.errors import ConfigError

SECRET_NAME = "secret"
TOKENS_NAME = "tokens"


def issue_keys(
    secret_file: Path, workers: int, out: Path, *, create_secret: bool, force: bool
) -> None:
    """Write the tokens of worker ids ``0 .. workers - 1`` to ``out`` (mode 0600).

    ``create_secret``: make ``secret_file`` first (it must not exist); else read it.
    ``force``: overwrite an existing ``out``. ConfigError for a bad count or missing secret.
    """
    from draco.net import auth

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if create_secret:
        secret = auth.write_secret(secret_file)
    else:
        if not secret_file.exists():
            raise ConfigError(
                f"secret file {secret_file} does not exist; add --create-secret to make it"
            )
        secret = auth.load_secret(secret_file)
    tokens = auth.issue_tokens(secret, range(workers))
    auth.write_token_file(out, tokens, overwrite=force)


def make_credentials(run_dir: Path, n_workers: int) -> tuple[Path, Path]:
    """A fresh cluster secret and the tokens of ids 0..n-1 in ``run_dir`` (both 0600)."""
    from draco.net.auth import issue_tokens, write_secret, write_token_file

    secret_path = run_dir / SECRET_NAME
    tokens_path = run_dir / TOKENS_NAME
    secret = write_secret(secret_path, overwrite=True)
    write_token_file(tokens_path, issue_tokens(secret, range(n_workers)), overwrite=True)
    return secret_path, tokens_path


def load_tokens(path: Path, first_id: int, count: int) -> dict[int, bytes]:
    """Tokens of ids ``first_id .. first_id + count - 1`` from a ``draco-ps keys`` file."""
    from draco.net.auth import read_token_file

    tokens = read_token_file(path)
    ids = range(first_id, first_id + count)
    missing = [i for i in ids if i not in tokens]
    if missing:
        raise ConfigError(
            f"{path} holds no token for worker id(s) {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}; it has ids "
            f"{min(tokens, default=None)}..{max(tokens, default=None)}"
        )
    return {i: tokens[i] for i in ids}
