//! The JSON of a page of messages, written by hand: the read path's response, and its largest
//! cost. serde_json scans every byte of every string it writes for characters to escape, keys,
//! ids and timestamps included, and goes through serde's machinery for each field. Here only the
//! values that can hold such characters (content, model, metadata) go through serde_json; keys
//! are literals, and ids, timestamps and numbers are formatted straight into the buffer, from the
//! tree itself (no `MessageView` copies). The bytes are exactly `serde_json::to_vec` of the same
//! page's `MessagePage` (tested against it, for every field).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::model::{BranchId, MessageId};
use crate::rfc3339::put;
use crate::tree::{Page, Tree};

/// A typical message's JSON in a page (ids, timestamp and keys ~330 bytes, plus content).
const MESSAGE_BYTES: usize = 400;

/// An id's JSON: 36 characters in quotes.
type UuidText = [u8; 38];

/// A page of `branch`'s path as JSON, written straight from the tree: byte for byte what
/// `MessagePage`'s `Serialize` writes for the same page (`MessagePage::of`), without building it.
/// The chat's actor writes it, so no message is copied out of the tree for it.
pub fn page(tree: &Tree, branch: BranchId, page: &Page<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(160 + page.nodes.len() * MESSAGE_BYTES);
    let chat = uuid_text(tree.chat().as_uuid());
    out.extend_from_slice(b"{\"chat_id\":");
    out.extend_from_slice(&chat);
    out.extend_from_slice(b",\"branch_id\":");
    out.extend_from_slice(&uuid_text(branch.as_uuid()));
    out.extend_from_slice(b",\"messages\":[");
    // Each message after the first is the child of the one before it: its parent's id is
    // already written once.
    let mut previous: Option<(MessageId, UuidText)> = None;
    let mut days = Days::default();
    for (i, node) in page.nodes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let id = node.id();
        let text = uuid_text(id.as_uuid());
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(&text);
        out.extend_from_slice(b",\"chat_id\":");
        out.extend_from_slice(&chat);
        out.extend_from_slice(b",\"parent_id\":");
        match (tree.parent_id(node), &previous) {
            (Some(parent), Some((before, before_text))) if parent == *before => {
                out.extend_from_slice(before_text)
            }
            (parent, _) => optional_uuid(&mut out, parent.as_ref().map(MessageId::as_uuid)),
        }
        out.extend_from_slice(b",\"role\":\"");
        out.extend_from_slice(node.role().as_str().as_bytes());
        out.extend_from_slice(b"\",\"content\":");
        string(&mut out, tree.content(node));
        out.extend_from_slice(b",\"model\":");
        match tree.model(node) {
            Some(model) => string(&mut out, model),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"metadata\":");
        through_serde_json(&mut out, &tree.metadata(node))?;
        out.extend_from_slice(b",\"created_at\":");
        match tree.created_millis(node) {
            Some(millis) => days.timestamp(&mut out, millis)?,
            None => timestamp(&mut out, &tree.created_at(node))?,
        }
        let (sibling_index, sibling_count) = tree.sibling_position_of(node);
        out.extend_from_slice(b",\"sibling_index\":");
        number(&mut out, sibling_index);
        out.extend_from_slice(b",\"sibling_count\":");
        number(&mut out, sibling_count);
        out.extend_from_slice(b",\"children_count\":");
        number(&mut out, tree.children_count(node));
        if let Some(feedback) = tree.feedback(node) {
            out.extend_from_slice(b",\"feedback\":");
            through_serde_json(&mut out, feedback)?;
        }
        out.push(b'}');
        previous = Some((id, text));
    }
    out.extend_from_slice(b"],\"has_more\":");
    out.extend_from_slice(if page.has_more { b"true" } else { b"false" });
    out.extend_from_slice(b",\"next_before\":");
    optional_uuid(
        &mut out,
        page.next_before().as_ref().map(MessageId::as_uuid),
    );
    out.extend_from_slice(b",\"total\":");
    number(&mut out, page.path_len);
    out.push(b'}');
    Ok(out)
}

/// A string as serde_json writes it: in quotes, with `"`, `\` and the control characters
/// escaped (`\n`, `\r`, `\t`, `\b`, `\f` short, the rest as `\u00xx`), nothing else. serde_json
/// looks every byte up in a table; this skips eight bytes at a time while none needs escaping
/// (`escapes`). Message text is most of a real page: 22 KB pages took 13.7 µs instead of 21.5
/// (BENCHMARKS.md, "Read path").
fn string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // `bytes[written..at]` needs no escape and is not in `out` yet.
    let (mut written, mut at) = (0, 0);
    while at < bytes.len() {
        // The last word padded with spaces, which need no escape.
        let word = bytes[at..].first_chunk::<8>().copied().unwrap_or_else(|| {
            let mut word = [b' '; 8];
            word[..bytes.len() - at].copy_from_slice(&bytes[at..]);
            word
        });
        let found = escapes(u64::from_le_bytes(word));
        if found == 0 {
            at += 8;
            continue;
        }
        at += found.trailing_zeros() as usize / 8;
        out.extend_from_slice(&bytes[written..at]);
        escape(out, bytes[at]);
        at += 1;
        written = at;
    }
    out.extend_from_slice(&bytes[written..]);
    out.push(b'"');
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// The high bit of each byte of `word` (eight bytes of text, the first lowest) that is `"`,
/// `\` or below 0x20, or 0 if there is none. The lowest bit set is exact: a bit can be set
/// wrongly only above a byte that is rightly marked (the borrow of its subtraction).
fn escapes(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash) & (ONES * 0x80)
}

/// The escape of a byte `escapes` marks.
fn escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(byte >> 4)],
            HEX[usize::from(byte & 0xf)],
        ]),
    }
}

/// A value that may need escaping, the way serde_json writes it.
fn through_serde_json<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, value)
}

fn uuid_text(id: &Uuid) -> UuidText {
    let mut text = [b'"'; 38];
    id.hyphenated().encode_lower(&mut text[1..37]);
    text
}

fn optional_uuid(out: &mut Vec<u8>, id: Option<&Uuid>) {
    match id {
        Some(id) => out.extend_from_slice(&uuid_text(id)),
        None => out.extend_from_slice(b"null"),
    }
}

fn number(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

const MILLIS_PER_DAY: i64 = 86_400_000;

/// Writes timestamps given as milliseconds (a message id's time), remembering the date text of
/// the last day it wrote: a page's messages mostly share a day, and the calendar date is the
/// costly part. The text is `timestamp`'s (chrono's) for the same instant.
struct Days {
    day: i64,
    /// `YYYY-MM-DDT`.
    date: [u8; 11],
}

impl Default for Days {
    fn default() -> Self {
        Self {
            day: i64::MIN,
            date: [0; 11],
        }
    }
}

impl Days {
    fn timestamp(&mut self, out: &mut Vec<u8>, millis: i64) -> Result<(), serde_json::Error> {
        let day = millis.div_euclid(MILLIS_PER_DAY);
        if day != self.day {
            let midnight = DateTime::from_timestamp_millis(day * MILLIS_PER_DAY);
            let mut text = [0u8; 32];
            match midnight.and_then(|m| crate::rfc3339::format(&m, &mut text)) {
                Some(_) => {
                    self.date.copy_from_slice(&text[..11]);
                    self.day = day;
                }
                // Outside what `rfc3339::format` writes: chrono's text.
                None => {
                    let time = DateTime::from_timestamp_millis(millis).unwrap_or_default();
                    return timestamp(out, &time);
                }
            }
        }
        // Below 86,400,000: a `u32`.
        let in_day = millis.rem_euclid(MILLIS_PER_DAY) as u32;
        let (seconds, fraction) = (in_day / 1000, in_day % 1000);
        let mut text = *b"HH:MM:SS.mmm";
        put(&mut text, 0, seconds / 3600, 2);
        put(&mut text, 3, seconds / 60 % 60, 2);
        put(&mut text, 6, seconds % 60, 2);
        out.push(b'"');
        out.extend_from_slice(&self.date);
        if fraction == 0 {
            // chrono leaves a zero fraction out.
            out.extend_from_slice(&text[..8]);
        } else {
            put(&mut text, 9, fraction, 3);
            out.extend_from_slice(&text[..12]);
        }
        out.extend_from_slice(b"Z\"");
        Ok(())
    }
}

fn timestamp(out: &mut Vec<u8>, time: &DateTime<Utc>) -> Result<(), serde_json::Error> {
    let mut text = [0u8; 32];
    match crate::rfc3339::format(time, &mut text) {
        Some(len) => {
            out.push(b'"');
            out.extend_from_slice(&text[..len]);
            out.push(b'"');
            Ok(())
        }
        // What `rfc3339::serialize` falls back to (chrono's own text).
        None => through_serde_json(out, time),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::model::{now, Branch, BranchId, ChatId, Message, Role};
    use crate::tree::Tree;
    use crate::views::MessagePage;

    fn message(chat: ChatId, parent: Option<MessageId>, role: Role, content: &str) -> Message {
        let (id, created_at) = MessageId::new_with_time();
        Message {
            id,
            chat_id: chat,
            parent_id: parent,
            role,
            content: Arc::from(content),
            created_at,
            model: None,
            metadata: None,
            idempotency_key: None,
        }
    }

    fn assert_string_as_serde_json(text: &str) {
        let mut out = b"x".to_vec();
        string(&mut out, text);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("x{}", serde_json::to_string(text).unwrap()),
            "{text:?}"
        );
    }

    /// Every ASCII character, once and twice, at every position of an eight-byte word and in
    /// the tail after the last whole word, among plain, multibyte and other escaped text.
    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for c in (0..0x80u8).map(char::from) {
            for before in 0..18 {
                let lead = "a".repeat(before);
                for after in ["", "b", "bcdefghijklmnopq", "é✓🌳\u{2028}", "\"\\\n"] {
                    assert_string_as_serde_json(&format!("{lead}{c}{after}"));
                    assert_string_as_serde_json(&format!("{lead}{c}{c}{after}{c}"));
                }
            }
        }
        assert_string_as_serde_json("");
    }

    /// Random text from an alphabet of plain, multibyte and escaped characters, lengths 0 to
    /// 63, against serde_json.
    #[test]
    fn random_strings_are_escaped_as_serde_json_escapes_them() {
        let alphabet: Vec<char> = "aZ0 ~\u{7f}é✓🌳\u{2028}\"\\/\n\r\t\u{0}\u{1}\u{8}\u{c}\u{1f}"
            .chars()
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            // xorshift64: a fixed sequence, so a failure repeats.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = next() % 64;
            let text: String = (0..len)
                .map(|_| alphabet[next() as usize % alphabet.len()])
                .collect();
            assert_string_as_serde_json(&text);
        }
    }

    /// Millisecond times, as `Days` writes them one after another (same day, next day, back
    /// again, out of range), against chrono's text through `rfc3339`.
    #[test]
    fn days_write_what_chrono_writes() {
        let day = MILLIS_PER_DAY;
        let now = crate::model::now().timestamp_millis();
        let mut times = vec![
            0,
            1,
            999,
            1_000,
            1_001,
            59_999,
            day - 1,
            day,
            day + 10,
            now,
            now + 1,
            now - now % day,
            now - now % day - 1,
            now + 86_399_999,
            // 9999-12-31T23:59:59.999Z, then the first instant chrono's own text is written for.
            253_402_300_799_999,
            253_402_300_800_000,
            // The largest time a UUIDv7 holds.
            (1 << 48) - 1,
            now,
        ];
        // A pseudo-random walk forward from 2001, in steps from none to about 25 days.
        let mut x: i64 = 0x2545_f491;
        let mut at = 1_000_000_000_000;
        for _ in 0..5_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let step = (x >> 20).rem_euclid(1 << (x >> 58).rem_euclid(32));
            at = (at + step) % 9_000_000_000_000;
            times.push(at);
        }
        let mut days = Days::default();
        for millis in times {
            let mut fast = Vec::new();
            days.timestamp(&mut fast, millis).unwrap();
            let mut slow = Vec::new();
            timestamp(&mut slow, &DateTime::from_timestamp_millis(millis).unwrap()).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(slow).unwrap(),
                "{millis}"
            );
        }
    }

    /// Every page of a chat whose messages use every field, with text that needs escaping,
    /// against serde_json's bytes for the same page.
    #[test]
    fn writes_what_serde_json_writes() {
        let chat = ChatId::new();
        let main = Branch {
            id: BranchId::new(),
            chat_id: chat,
            name: "main".into(),
            head: None,
            forked_from: None,
            created_at: now(),
            updated_at: now(),
            fallback: None,
        };
        let branch = main.id;
        let mut tree = Tree::new(main);
        let mut parent = None;
        let contents = [
            "plain",
            "quotes \" and \\ backslash / slash",
            "controls \u{1} \u{1f} \u{7f} \n \r \t \u{8} \u{c}",
            "non-ASCII é ✓ 🌳 \u{2028}",
            "",
        ];
        for (i, content) in contents.iter().enumerate() {
            let role = if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            };
            let mut m = message(chat, parent, role, content);
            if i == 1 {
                m.model = Some(Arc::from("model \"x\" ✓"));
                m.metadata = Some(Arc::new(json!({
                    "finish_reason": "stop",
                    "usage": {"total_tokens": 7, "big": u64::MAX, "ratio": 0.25},
                    "$odd.key": ["\u{0}", null, true],
                })));
            }
            if i == 2 {
                // Timestamps not taken from the id: whole seconds, and outside what the fast
                // formatter writes (chrono's text then).
                m.created_at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
            }
            if i == 3 {
                m.created_at = Utc.with_ymd_and_hms(12026, 1, 2, 3, 4, 5).unwrap();
            }
            parent = Some(m.id);
            tree.append(branch, m).unwrap();
        }
        // A sibling of the second message, so sibling positions and child counts vary.
        let first = tree.path(branch).unwrap()[0].id();
        tree.attach(message(chat, Some(first), Role::System, "sibling"))
            .unwrap();
        // Every page size, and pages further back (`before`), so a page's first message has
        // a parent outside it.
        for limit in [0, 1, 3, 20] {
            let mut before = None;
            loop {
                let page = tree.page(branch, limit, before).unwrap();
                let expected = serde_json::to_vec(&MessagePage::of(&tree, branch, &page)).unwrap();
                assert_eq!(
                    String::from_utf8(super::page(&tree, branch, &page).unwrap()).unwrap(),
                    String::from_utf8(expected).unwrap(),
                    "limit {limit}, before {before:?}"
                );
                before = page.next_before();
                if before.is_none() {
                    break;
                }
            }
        }
    }
}
