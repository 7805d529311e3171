//! An incremental parser for server-sent events, as providers stream them: fed arbitrary byte
//! chunks, it yields each event's `data` (multi-line data joined with `\n`). Other fields and
//! comments are skipped; `\n`, `\r\n` and `\r` line endings are accepted.

#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
    /// The previous chunk ended with `\r`: a `\n` starting the next one is part of that ending.
    after_cr: bool,
}

impl SseParser {
    /// Feeds a chunk; returns the data of every event it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &byte in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, &mut events);
                }
                _ => self.line.push(byte),
            }
        }
        events
    }

    fn line_done(&mut self, line: &[u8], events: &mut Vec<String>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                events.push(data);
            }
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_line_endings() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nda").is_empty());
        assert!(p.feed(b"ta: {\"a\":1}\r").is_empty());
        assert_eq!(p.feed(b"\n\r\ndata: [DONE]\n\n"), ["{\"a\":1}", "[DONE]"]);
        assert_eq!(
            p.feed(b"event: x\nid: 3\ndata:one\ndata: two\n\n"),
            ["one\ntwo"]
        );
        // A UTF-8 character split between chunks survives.
        let text = "data: é\n\n".as_bytes();
        assert!(p.feed(&text[..7]).is_empty());
        assert_eq!(p.feed(&text[7..]), ["é"]);
    }
}
