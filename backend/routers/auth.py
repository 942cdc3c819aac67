from typing import Any

from fastapi import APIRouter

from backend import crud
from backend.deps import LoginCredentials, PasswordHasherDep, SessionDep, SettingsDep
from backend.errors import ForbiddenError, UnauthorizedError, problem_responses
from backend.models import LoginRequest, LoginResponse, RegisterRequest
from backend.security import issue_login_response

router = APIRouter(prefix="/auth", tags=["auth"], responses=problem_responses(422, 503))

LOGIN_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["username", "password"],
    "properties": {
        "username": {"type": "string", "description": "The account's email"},
        "password": {"type": "string", "format": "password"},
    },
}


@router.post(
    "/register",
    name="auth-register",
    response_model=LoginResponse,
    responses=problem_responses(403, 409),
)
async def register(
    body: RegisterRequest, session: SessionDep, settings: SettingsDep, hasher: PasswordHasherDep
) -> LoginResponse:
    """Create an account and log it in."""
    if not settings.REGISTRATION_ENABLED:
        raise ForbiddenError("Registration is closed on this server.")
    hashed_password = await hasher.hash(body.password)
    user = await crud.create_user(session, data=body, hashed_password=hashed_password)
    return issue_login_response(user, settings)


@router.post(
    "/login",
    name="auth-login",
    response_model=LoginResponse,
    responses=problem_responses(401, 403),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": LOGIN_FORM_SCHEMA},
                "application/json": {"schema": LoginRequest.model_json_schema()},
            },
        }
    },
)
async def login(
    credentials: LoginCredentials,
    session: SessionDep,
    settings: SettingsDep,
    hasher: PasswordHasherDep,
) -> LoginResponse:
    """Exchange an email and password for tokens: the OAuth2 password form or JSON."""
    user = await crud.authenticate(
        session, email=credentials.email, password=credentials.password, hasher=hasher
    )
    if user is None:
        raise UnauthorizedError("Incorrect email or password.")
    if not user.is_active:
        raise ForbiddenError("This account is deactivated.")
    return issue_login_response(user, settings)
