//! Accounts and tokens: bcrypt password hashes (computed off the async threads) and HS256 JWTs.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use actix_web::dev::Payload;
use actix_web::http::{header, Method};
use actix_web::{web, FromRequest, HttpRequest};
use anyhow::Context;
use arbor_actors::model::{UserId, UserRecord};
use arbor_actors::ports::MetadataStore;
use chrono::Utc;
use futures_util::future::{ready, Ready};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::config::{AuthSettings, Secret};
use crate::domain::{Email, Password, Username};
use crate::error::{ApiError, Code};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
}

/// Issues and checks access tokens.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_minutes: i64,
    /// Tokens whose signature has been checked, until they expire: checking an HS256 JWT
    /// (base64, HMAC, JSON) cost a twentieth of a resident read. Bounded; emptied when full.
    /// Keyed by a SipHash of the token's ending (`hasher`), which the map takes as it is.
    verified: Mutex<HashMap<u64, Verified, BuildHasherDefault<Prehashed>>>,
    hasher: RandomState,
}

/// A map hasher for keys that are already hashes: hashing them again cost as much as the first
/// time.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A token that passed verification once.
struct Verified {
    token: Box<str>,
    user: UserId,
    exp: i64,
}

/// Verified tokens remembered at most (a few hundred bytes each).
const VERIFIED_CAPACITY: usize = 65_536;
/// Seconds past `exp` a token is still accepted (clock skew), as the JWT validation allows.
const LEEWAY_SECS: i64 = 5;

impl Tokens {
    pub fn new(secret: &[u8], ttl_minutes: i64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS as u64;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_minutes,
            verified: Mutex::new(HashMap::default()),
            hasher: RandomState::new(),
        }
    }

    pub fn ttl_seconds(&self) -> i64 {
        self.ttl_minutes * 60
    }

    pub fn issue(&self, user: UserId) -> Result<String, ApiError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + self.ttl_seconds(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// Only HS256 is accepted: `alg: none` and other algorithms fail validation. A token
    /// verified before is recognised by a constant-time comparison with the remembered one.
    pub fn verify(&self, token: &str) -> Result<UserId, ApiError> {
        // Keyed by the token's last 16 bytes, the end of its signature (which only the secret
        // makes): hashing all ~180 bytes was a third of a verified token's check. A forgery
        // with the same ending finds the entry and fails the comparison of the whole token.
        let key = self
            .hasher
            .hash_one(&token.as_bytes()[token.len().saturating_sub(16)..]);
        let now = Utc::now().timestamp();
        if let Ok(mut verified) = self.verified.lock() {
            if let Some(v) = verified.get(&key) {
                if constant_time_eq(v.token.as_bytes(), token.as_bytes()) {
                    if v.exp + LEEWAY_SECS >= now {
                        return Ok(v.user);
                    }
                    verified.remove(&key);
                }
            }
        }
        let (user, exp) = self.verify_signature(token)?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
            let token = token.into();
            verified.insert(key, Verified { token, user, exp });
        }
        Ok(user)
    }

    fn verify_signature(&self, token: &str) -> Result<(UserId, i64), ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::new(Code::TokenExpired, "the access token has expired")
                }
                _ => ApiError::new(Code::InvalidToken, "the access token is invalid"),
            })?;
        let user = data
            .claims
            .sub
            .parse()
            .map_err(|_| ApiError::new(Code::InvalidToken, "the access token is invalid"))?;
        Ok((user, data.claims.exp))
    }
}

/// The configured JWT secret, or one generated on first start and kept in the data directory.
pub fn load_or_create_secret(settings: &AuthSettings, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if !settings.jwt_secret.expose().is_empty() {
        return Ok(settings.jwt_secret.expose().as_bytes().to_vec());
    }
    let path = data_dir.join("jwt_secret");
    if path.exists() {
        let secret = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if secret.len() >= 32 {
            return Ok(secret);
        }
        anyhow::bail!(
            "{} is shorter than 32 bytes; remove it to regenerate",
            path.display()
        );
    }
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    tracing::warn!(
        path = %path.display(),
        "no auth.jwt_secret configured: generated one and stored it (mode 0600); tokens stay valid across restarts while it is kept"
    );
    Ok(secret.into_bytes())
}

/// Compares secrets without an early exit that would leak how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A static bearer token from `auth.api_tokens` and the account it acts as.
struct ApiToken {
    secret: Secret,
    user: UserId,
}

/// Password hashing (bcrypt, about 0.2 s of a core at cost 12) on threads of its own behind a
/// bounded queue: a login flood takes those threads, never the HTTP workers or the chat actors,
/// and once the queue is full a sign-up or login gets 503 `auth_busy` at once instead of waiting.
pub struct PasswordHasher {
    jobs: std::sync::mpsc::SyncSender<Box<dyn FnOnce() + Send>>,
    /// `arbor_auth_hash_rejected_total`.
    pub rejected: prometheus::IntCounter,
}

impl PasswordHasher {
    /// `threads` threads (0: half the cores, at least one), `queue` jobs waiting at most.
    pub fn start(threads: usize, queue: usize) -> anyhow::Result<Self> {
        let threads = match threads {
            0 => (crate::config::Settings::cores() / 2).max(1),
            n => n,
        };
        let (jobs, next) = std::sync::mpsc::sync_channel::<Box<dyn FnOnce() + Send>>(queue);
        let next = Arc::new(std::sync::Mutex::new(next));
        for i in 0..threads {
            let next = next.clone();
            std::thread::Builder::new()
                .name(format!("arbor-hash-{i}"))
                .spawn(move || loop {
                    let job = next.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => break,
                    }
                })?;
        }
        Ok(Self {
            jobs,
            rejected: prometheus::IntCounter::new(
                "arbor_auth_hash_rejected_total",
                "Sign-ups and logins refused with 503 auth_busy: every password-hashing thread was busy and its queue full.",
            )?,
        })
    }

    /// Runs `work` on a hashing thread, or refuses at once when the queue is full.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = done.send(work());
        });
        if self.jobs.try_send(job).is_err() {
            self.rejected.inc();
            return Err(ApiError::new(
                Code::AuthBusy,
                "too many sign-ups and logins at once; retry",
            ));
        }
        outcome
            .await
            .map_err(|_| ApiError::internal("a password-hashing thread stopped"))
    }
}

/// Account operations.
pub struct Accounts {
    store: Arc<dyn MetadataStore>,
    tokens: Tokens,
    api_tokens: Vec<ApiToken>,
    bcrypt_cost: u32,
    hasher: Arc<PasswordHasher>,
    /// Per-user request limits, failed-login limits (`crate::rate_limit`); `None`: none.
    limits: Option<Arc<crate::rate_limit::RateLimits>>,
    /// Verified against when the login is unknown, so timing does not reveal which logins exist.
    dummy_hash: String,
}

/// A freshly issued token.
pub struct Session {
    pub user: UserRecord,
    pub access_token: String,
    pub expires_in: i64,
}

impl Accounts {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        tokens: Tokens,
        bcrypt_cost: u32,
    ) -> anyhow::Result<Self> {
        let dummy_hash = bcrypt::hash("arbor-dummy-password", bcrypt_cost)?;
        Ok(Self {
            store,
            tokens,
            api_tokens: Vec::new(),
            bcrypt_cost,
            hasher: Arc::new(PasswordHasher::start(1, 32)?),
            limits: None,
            dummy_hash,
        })
    }

    /// Hashes and checks passwords on `hasher`'s threads.
    pub fn with_hasher(mut self, hasher: Arc<PasswordHasher>) -> Self {
        self.hasher = hasher;
        self
    }

    /// Enforces `limits` on authenticated requests and failed logins.
    pub fn with_limits(mut self, limits: Arc<crate::rate_limit::RateLimits>) -> Self {
        self.limits = Some(limits);
        self
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Resolves `auth.api_tokens` to their accounts, creating a password-less account (it
    /// cannot log in) for an email that is not registered yet.
    pub async fn with_api_tokens(
        mut self,
        configured: &BTreeMap<String, Secret>,
    ) -> anyhow::Result<Self> {
        for (email, secret) in configured {
            let token = secret.expose();
            anyhow::ensure!(
                token.chars().count() >= 16 && !token.chars().any(char::is_whitespace),
                "auth.api_tokens: the token for {email} must be 16 characters at least, without spaces"
            );
            let email = Email::parse(email)
                .map_err(|_| anyhow::anyhow!("auth.api_tokens: {email:?} is not an email"))?
                .into_inner();
            let user = match self.store.user_by_login(&email).await? {
                Some(user) => user.id,
                None => {
                    let user = UserRecord {
                        id: UserId::new(),
                        email: Some(email),
                        username: None,
                        // Not a bcrypt hash: no password ever verifies against it.
                        password_hash: "!".into(),
                        created_at: arbor_actors::model::now(),
                        is_admin: false,
                    };
                    self.store.create_user(&user).await?;
                    user.id
                }
            };
            self.api_tokens.push(ApiToken {
                secret: secret.clone(),
                user,
            });
        }
        Ok(self)
    }

    /// The account a static API token acts as. Every configured token is compared in full.
    fn api_token_user(&self, sent: &str) -> Option<UserId> {
        self.api_tokens.iter().fold(None, |found, t| {
            let matches = constant_time_eq(t.secret.expose().as_bytes(), sent.as_bytes());
            if matches {
                Some(t.user)
            } else {
                found
            }
        })
    }

    pub async fn register(
        &self,
        email: Option<Email>,
        username: Option<Username>,
        password: Password,
    ) -> Result<Session, ApiError> {
        let cost = self.bcrypt_cost;
        let plain = password.expose().to_owned();
        let hash = self
            .hasher
            .run(move || bcrypt::hash(plain, cost))
            .await?
            .map_err(ApiError::internal)?;
        let user = UserRecord {
            id: UserId::new(),
            email: email.map(Email::into_inner),
            username: username.map(Username::into_inner),
            password_hash: hash,
            created_at: arbor_actors::model::now(),
            is_admin: false,
        };
        self.store.create_user(&user).await?;
        self.session(user)
    }

    /// Checks a login from `ip`: refused before any hashing while that address, or that account
    /// from it, has used up its failed logins (`crate::rate_limit`).
    pub async fn login(
        &self,
        ip: std::net::IpAddr,
        login: &str,
        password: &str,
    ) -> Result<Session, ApiError> {
        let login = login.trim();
        if let Some(limits) = &self.limits {
            limits.check_login(ip, login)?;
        }
        let user = self.store.user_by_login(login).await?;
        let hash = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let plain = password.to_owned();
        let ok = self
            .hasher
            .run(move || bcrypt::verify(plain, &hash).unwrap_or(false))
            .await?;
        if let Some(limits) = &self.limits {
            limits.login_outcome(ip, login, ok && user.is_some());
        }
        match user {
            Some(user) if ok => self.session(user),
            _ => Err(ApiError::new(
                Code::InvalidCredentials,
                "wrong login or password",
            )),
        }
    }

    pub async fn user(&self, id: UserId) -> Result<UserRecord, ApiError> {
        self.store
            .user_by_id(id)
            .await?
            .ok_or_else(|| ApiError::new(Code::InvalidToken, "the token's user no longer exists"))
    }

    fn session(&self, user: UserRecord) -> Result<Session, ApiError> {
        Ok(Session {
            access_token: self.tokens.issue(user.id)?,
            expires_in: self.tokens.ttl_seconds(),
            user,
        })
    }
}

/// The authenticated caller, from `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub UserId);

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    /// Authenticates, then counts the request against the user's read or write limit.
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(accounts(req).and_then(|accounts| {
            let user = accounts.authenticate(req)?;
            if let Some(limits) = &accounts.limits {
                let read = matches!(*req.method(), Method::GET | Method::HEAD);
                limits.check_request(user.0, read)?;
            }
            Ok(user)
        }))
    }
}

fn accounts(req: &HttpRequest) -> Result<&web::Data<Accounts>, ApiError> {
    req.app_data::<web::Data<Accounts>>()
        .ok_or_else(|| ApiError::internal("accounts not configured"))
}

/// The caller's identity from the bearer token (no store access).
pub fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    accounts(req)?.authenticate(req)
}

impl Accounts {
    /// The caller's identity from the bearer token of `req` (no store access).
    fn authenticate(&self, req: &HttpRequest) -> Result<AuthUser, ApiError> {
        let value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::new(Code::MissingToken, "send Authorization: Bearer <token>")
        })?;
        // Bytes, then UTF-8: `HeaderValue::to_str` checks the ~180 bytes of a token one at a time
        // (5% of a read's instructions), `from_utf8` a word at a time. A header value holds no
        // control characters but tab, which `trim_ascii` removes at the ends, and a token with
        // one inside fails as any malformed token does.
        let bytes = value.as_bytes();
        let token = bytes
            .strip_prefix(b"Bearer ")
            .or_else(|| bytes.strip_prefix(b"bearer "))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .and_then(|t| std::str::from_utf8(t).ok())
            .ok_or_else(|| {
                ApiError::new(Code::MissingToken, "send Authorization: Bearer <token>")
            })?;
        if let Some(user) = self.api_token_user(token) {
            return Ok(AuthUser(user));
        }
        self.tokens.verify(token).map(AuthUser)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{constant_time_eq, Tokens, UserId};

    #[test]
    fn remembered_tokens_still_reject_forgeries_and_expiry() {
        let tokens = Tokens::new(b"0123456789abcdef0123456789abcdef", 60);
        let user = UserId::new();
        let token = tokens.issue(user).unwrap();
        assert_eq!(tokens.verify(&token).unwrap(), user);
        assert_eq!(tokens.verify(&token).unwrap(), user, "from the cache");
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(tokens.verify(&forged).unwrap_err().code(), "invalid_token");
        // The same signature on another payload: found by its ending, refused whole.
        let dot = token.find('.').unwrap();
        let mut payload_forged = token.clone().into_bytes();
        payload_forged[dot + 1] = if payload_forged[dot + 1] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let payload_forged = String::from_utf8(payload_forged).unwrap();
        assert_eq!(
            tokens.verify(&payload_forged).unwrap_err().code(),
            "invalid_token"
        );
        assert_eq!(tokens.verify(&token).unwrap(), user, "still remembered");
        let other = Tokens::new(b"another-secret-another-secret-!!", 60);
        assert_eq!(other.verify(&token).unwrap_err().code(), "invalid_token");
        let expired = Tokens::new(b"0123456789abcdef0123456789abcdef", -1);
        let old = expired.issue(user).unwrap();
        assert_eq!(expired.verify(&old).unwrap_err().code(), "token_expired");
        assert_eq!(expired.verify(&old).unwrap_err().code(), "token_expired");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
