//! Parse, don't validate: inputs become these types at the edge, or a 422 with a stable code.

use std::sync::Arc;

use crate::error::{ApiError, Code};

/// A normalized (trimmed, lower-cased) email address.
#[derive(Debug, Clone)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let email = raw.trim().to_lowercase();
        let valid = (3..=254).contains(&email.len())
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(email.split_once('@'), Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
        if valid {
            Ok(Self(email))
        } else {
            Err(ApiError::new(
                Code::InvalidEmail,
                "not a valid email address",
            ))
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// 3 to 32 characters of letters, digits, `_`, `.` and `-`.
#[derive(Debug, Clone)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let name = raw.trim();
        let valid = (3..=32).contains(&name.chars().count())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(ApiError::new(
                Code::InvalidUsername,
                "a username is 3 to 32 letters, digits, '_', '.' or '-'",
            ))
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// 8 to 72 bytes (bcrypt ignores anything past 72, so longer is refused rather than truncated).
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, ApiError> {
        if raw.chars().count() < 8 || raw.len() > 72 {
            return Err(ApiError::new(
                Code::InvalidPassword,
                "a password is 8 to 72 bytes long",
            ));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// NUL characters are refused in every stored text: PostgreSQL's `text` cannot hold them, and a
/// value must be storable in every backend.
fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

/// Message text: not blank, no NUL characters, at most `max` characters.
pub fn content(raw: &str, max: usize) -> Result<Arc<str>, ApiError> {
    if has_nul(raw) {
        return Err(ApiError::new(
            Code::InvalidContent,
            "content must not contain NUL characters",
        ));
    }
    if raw.trim().is_empty() {
        return Err(ApiError::new(
            Code::EmptyContent,
            "content must not be empty",
        ));
    }
    if raw.chars().count() > max {
        return Err(ApiError::new(
            Code::ContentTooLong,
            format!("content is limited to {max} characters"),
        ));
    }
    Ok(Arc::from(raw))
}

/// An optional label (chat title): trimmed, blank means none, at most `max` characters.
pub fn title(raw: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    let Some(t) = raw.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if t.chars().count() > max || has_nul(t) {
        return Err(ApiError::new(
            Code::InvalidTitle,
            format!("a title is limited to {max} characters, without NUL characters"),
        ));
    }
    Ok(Some(t.to_owned()))
}

/// A branch name: trimmed, 1 to `max` characters.
pub fn branch_name(raw: &str, max: usize) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > max || has_nul(name) {
        return Err(ApiError::new(
            Code::InvalidBranchName,
            format!("a branch name is 1 to {max} characters, without NUL characters"),
        ));
    }
    Ok(name.to_owned())
}

/// An optional branch name (absent: the server names the branch).
pub fn optional_branch_name(raw: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    raw.map(|n| branch_name(n, max)).transpose()
}

/// A system prompt: blank means none, at most `max` characters.
pub fn system_prompt(raw: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    long_text(raw, max, Code::InvalidSystemPrompt, "a system prompt")
}

/// A chat's description: blank means none, at most `max` characters.
pub fn description(raw: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    long_text(raw, max, Code::InvalidDescription, "a description")
}

/// Free text kept as given: blank means none, at most `max` characters, no NUL.
fn long_text(
    raw: Option<&str>,
    max: usize,
    code: Code,
    what: &str,
) -> Result<Option<String>, ApiError> {
    let Some(text) = raw.filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > max || has_nul(text) {
        return Err(ApiError::new(
            code,
            format!("{what} is limited to {max} characters, without NUL characters"),
        ));
    }
    Ok(Some(text.to_owned()))
}

/// Feedback as a client sends it, checked against `limits`: tags trimmed, non-empty, without
/// duplicates or control characters; a comment without NUL (an empty one is none).
pub fn feedback(
    rating: arbor_actors::model::Rating,
    tags: Vec<String>,
    comment: Option<String>,
    limits: &crate::config::LimitSettings,
) -> Result<arbor_actors::model::Feedback, ApiError> {
    let invalid = |message: String| ApiError::new(Code::InvalidFeedback, message);
    if tags.len() > limits.max_feedback_tags {
        return Err(invalid(format!(
            "at most {} tags",
            limits.max_feedback_tags
        )));
    }
    let mut kept: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.trim();
        let chars = tag.chars().count();
        if chars == 0 || chars > limits.max_feedback_tag_chars || tag.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "a tag is 1 to {} characters, without control characters",
                limits.max_feedback_tag_chars
            )));
        }
        if !kept.iter().any(|t| t == tag) {
            kept.push(tag.to_owned());
        }
    }
    let comment = comment.filter(|c| !c.trim().is_empty());
    if let Some(c) = &comment {
        if c.chars().count() > limits.max_feedback_comment_chars || c.contains('\0') {
            return Err(invalid(format!(
                "a comment is at most {} characters, without NUL",
                limits.max_feedback_comment_chars
            )));
        }
    }
    Ok(arbor_actors::model::Feedback {
        rating,
        tags: kept,
        comment,
        updated_at: arbor_actors::model::now(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            Email::parse("  Bob@Example.COM ").unwrap().into_inner(),
            "bob@example.com"
        );
        for bad in ["", "bob", "@x", "bob@", "a b@c.d", "a@b@c"] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_limits_count_characters() {
        assert!(content("   ", 10).is_err());
        assert!(content("ééééé", 5).is_ok());
        assert_eq!(content("ééééé!", 5).unwrap_err().code(), "content_too_long");
    }

    #[test]
    fn nul_characters_are_refused_in_stored_text() {
        assert_eq!(content("a\0b", 10).unwrap_err().code(), "invalid_content");
        assert!(title(Some("a\0b"), 10).is_err());
        assert!(branch_name("a\0b", 10).is_err());
        assert!(system_prompt(Some("a\0b"), 10).is_err());
        assert!(Email::parse("a\0@b.c").is_err());
    }

    #[test]
    fn passwords_refuse_silent_truncation() {
        assert!(Password::parse("short".into()).is_err());
        assert!(Password::parse("x".repeat(73)).is_err());
        assert!(Password::parse("password123".into()).is_ok());
    }
}
