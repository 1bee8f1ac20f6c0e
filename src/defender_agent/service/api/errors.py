"""AWS's error shape for the REST API: ``x-amzn-ErrorType`` and ``{"message": ...}``.

botocore's restJson1 parser takes the error code from the ``x-amzn-ErrorType`` header
and the message from the body, so ``ClientError.response["Error"]["Code"]`` is the name
below and the HTTP status is the one AWS IoT uses for it (the model's ``httpStatusCode``,
403 for the authentication errors AWS's front door raises).

>>> err = ApiError("ResourceNotFoundException", "Security profile p does not exist")
>>> err.status, err.body()
(404, b'{"message":"Security profile p does not exist"}')
"""

from __future__ import annotations

import json
from typing import Final

__all__ = ["STATUS", "ApiError"]

#: HTTP status per AWS exception name.
STATUS: Final[dict[str, int]] = {
    "InvalidRequestException": 400,
    "SerializationException": 400,
    "ResourceNotFoundException": 404,
    "UnknownOperationException": 404,
    "ResourceAlreadyExistsException": 409,
    "VersionConflictException": 409,
    "LimitExceededException": 410,
    "RequestEntityTooLargeException": 413,
    "ThrottlingException": 429,
    "UnauthorizedException": 401,
    "MissingAuthenticationTokenException": 403,
    "IncompleteSignatureException": 403,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "InternalFailureException": 500,
    "ServiceUnavailableException": 503,
}


class ApiError(Exception):
    """An error answer: AWS's exception name, its HTTP status, a one-line message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = " ".join(message.split())

    @property
    def status(self) -> int:
        """The HTTP status of the code."""
        return STATUS.get(self.code, 400)

    def body(self) -> bytes:
        """The JSON body."""
        return json.dumps({"message": self.message}, separators=(",", ":")).encode()

    def headers(self) -> dict[str, str]:
        """The headers botocore reads the code from."""
        return {"x-amzn-ErrorType": self.code, "Content-Type": "application/json"}
