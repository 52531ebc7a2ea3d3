"""Logging in with a password, the same for the login page and `POST /v1/auth/login`: checked
under the limit of failed logins per account and per client address (`limits.LoginLimiter`)."""

from __future__ import annotations

from sudo_core.accounts import Account, AccountError, Accounts

from .limits import LoginLimiter


class WrongPassword(AccountError):
    """No account has this login, or its password is another (401): which, is never told."""

    def __init__(self) -> None:
        super().__init__("wrong email, username or password")


async def log_in(
    accounts: Accounts, limiter: LoginLimiter, login: str, password: str, address: str
) -> Account:
    """The account whose email or username is `login`, if `password` is its own; `RateLimited`
    before the password is checked if the account or the address (the client's) is at its limit."""
    attempt = limiter.reserve(login, address)
    account = await accounts.check_password(login, password)
    if account is None:
        raise WrongPassword()
    limiter.succeeded(attempt)
    return account
