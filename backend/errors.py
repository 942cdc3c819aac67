"""Domain errors: what crud, security and the rate limiter refuse, free of any framework.

Each names the HTTP status it stands for (from the standard library's list); turning
one into a response is `problems.py`'s job.
"""

from http import HTTPStatus


class DomainError(Exception):
    """An expected failure, answered with `status_code` and `detail`."""

    status_code = HTTPStatus.BAD_REQUEST

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequestError(DomainError):
    status_code = HTTPStatus.BAD_REQUEST


class NotFoundError(DomainError):
    status_code = HTTPStatus.NOT_FOUND


class ConflictError(DomainError):
    status_code = HTTPStatus.CONFLICT


class UserGoneError(NotFoundError):
    def __init__(self) -> None:
        super().__init__("The user was deleted meanwhile.")


class PreconditionFailedError(DomainError):
    status_code = HTTPStatus.PRECONDITION_FAILED

    def __init__(self) -> None:
        super().__init__("The user changed since the version you sent: fetch it again and retry.")


class EmailTakenError(ConflictError):
    def __init__(self, detail: str = "A user with this email already exists.") -> None:
        super().__init__(detail)


class EmailLookalikeError(EmailTakenError):
    """Taken in effect: another account's email renders the same (Unicode TR39)."""

    def __init__(self) -> None:
        super().__init__(
            "A user with an email that looks the same (other letters that render alike) "
            "already exists."
        )


class UnauthorizedError(DomainError):
    """No valid credentials; answered with a Bearer challenge."""

    status_code = HTTPStatus.UNAUTHORIZED


class ForbiddenError(DomainError):
    status_code = HTTPStatus.FORBIDDEN


class RetryLaterError(DomainError):
    """A refusal that passes: the client may retry after `retry_after_seconds`."""

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class ServiceUnavailableError(RetryLaterError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE


class TooManyRequestsError(RetryLaterError):
    status_code = HTTPStatus.TOO_MANY_REQUESTS
