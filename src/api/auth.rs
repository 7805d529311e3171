//! `/api/v1/auth/*`: register, login (JSON), token (OAuth2 password form), me.

use actix_web::{web, Either, HttpResponse};
use arbor_actors::model::UserRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::Json;
use crate::auth::{Accounts, AuthUser, Session};
use crate::domain::{Email, Password, Username};
use crate::error::{ApiError, Code, ErrorBody};
use crate::rate_limit::AuthAttempt;

/// A new account: an email, a username, or both (seed 002's clients send only a username).
/// Either one logs in; an email, when given, is unique, and so is a username.
#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    pub email: Option<String>,
    pub password: String,
    pub username: Option<String>,
}

/// Log in with `email` or `username` (either field accepts either).
#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: Option<String>,
    pub username: Option<String>,
    pub password: String,
}

/// The OAuth2 password grant form (`username` may hold the email).
#[derive(Deserialize, ToSchema)]
pub struct TokenForm {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema, Clone)]
pub struct UserView {
    pub id: uuid::Uuid,
    /// `null` for an account registered with only a username.
    pub email: Option<String>,
    pub username: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        Self {
            id: *u.id.as_uuid(),
            email: u.email.clone(),
            username: u.username.clone(),
            created_at: u.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: i64,
    pub user: UserView,
}

impl From<Session> for TokenResponse {
    fn from(s: Session) -> Self {
        Self {
            access_token: s.access_token,
            token_type: "bearer",
            expires_in: s.expires_in,
            user: UserView::from(&s.user),
        }
    }
}

/// A new account: the user's fields, and a token so the client is logged in at once.
#[derive(Serialize, ToSchema)]
pub struct Registered {
    #[serde(flatten)]
    pub account: UserView,
    #[serde(flatten)]
    pub session: TokenResponse,
}

impl Registered {
    pub async fn create(accounts: &Accounts, body: RegisterRequest) -> Result<Self, ApiError> {
        if body.email.is_none() && body.username.is_none() {
            return Err(ApiError::new(
                Code::ValidationFailed,
                "give `email`, `username`, or both",
            ));
        }
        let email = body.email.as_deref().map(Email::parse).transpose()?;
        let username = body.username.as_deref().map(Username::parse).transpose()?;
        let password = Password::parse(body.password)?;
        let session = TokenResponse::from(accounts.register(email, username, password).await?);
        Ok(Self {
            account: session.user.clone(),
            session,
        })
    }
}

/// Create an account; answers with the account and a token.
#[utoipa::path(post, path = "/api/v1/auth/register", operation_id = "register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = Registered), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn register(
    attempt: AuthAttempt,
    accounts: web::Data<Accounts>,
    body: Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let registered = attempt
        .slowly(Registered::create(&accounts, body.into_inner()).await)
        .await?;
    Ok(HttpResponse::Created().json(registered))
}

/// Log in with a JSON body, or the same fields as a form.
#[utoipa::path(post, path = "/api/v1/auth/login", operation_id = "log_in", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody)))]
pub async fn login(
    attempt: AuthAttempt,
    accounts: web::Data<Accounts>,
    body: Either<Json<LoginRequest>, web::Form<LoginRequest>>,
) -> Result<web::Json<TokenResponse>, ApiError> {
    let body = match body {
        Either::Left(json) => json.into_inner(),
        Either::Right(form) => form.into_inner(),
    };
    let login = body
        .email
        .as_deref()
        .or(body.username.as_deref())
        .ok_or_else(|| ApiError::new(Code::ValidationFailed, "give `email` or `username`"))?;
    let session = attempt
        .slowly(accounts.login(attempt.ip, login, &body.password).await)
        .await?;
    Ok(web::Json(session.into()))
}

#[utoipa::path(post, path = "/api/v1/auth/token", operation_id = "issue_token", tag = "auth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody)))]
pub async fn token(
    attempt: AuthAttempt,
    accounts: web::Data<Accounts>,
    form: web::Form<TokenForm>,
) -> Result<web::Json<TokenResponse>, ApiError> {
    let session = attempt
        .slowly(
            accounts
                .login(attempt.ip, &form.username, &form.password)
                .await,
        )
        .await?;
    Ok(web::Json(session.into()))
}

#[utoipa::path(get, path = "/api/v1/auth/me", operation_id = "get_current_user", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody)))]
pub async fn me(
    accounts: web::Data<Accounts>,
    user: AuthUser,
) -> Result<web::Json<UserView>, ApiError> {
    let record = accounts.user(user.0).await?;
    Ok(web::Json(UserView::from(&record)))
}
