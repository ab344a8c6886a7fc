//! The built-in echo model: answers with the last user message, cut to the token
//! limit, and counts "tokens" as whitespace-separated pieces.

use serde_json::Value;

/// What the echo model says to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The answer in pieces ("tokens"); joined, they are the answer's text.
    pub(crate) pieces: Vec<String>,
    /// Tokens in the request's messages (and system prompt).
    pub(crate) prompt_tokens: u64,
    /// Whether the token limit cut the answer short.
    pub(crate) truncated: bool,
}

impl Reply {
    /// The whole answer.
    pub(crate) fn text(&self) -> String {
        self.pieces.concat()
    }

    /// Tokens in the answer.
    pub(crate) fn completion_tokens(&self) -> u64 {
        self.pieces.len() as u64
    }
}

/// Answers `messages`, preceded by an optional `system` prompt, in at most
/// `max_tokens` pieces.
pub(crate) fn reply(system: Option<&Value>, messages: &[Value], max_tokens: Option<u64>) -> Reply {
    let prompt_tokens = system.map_or(0, |system| count_tokens(&text_of(system)))
        + messages
            .iter()
            .map(|message| count_tokens(&text_of(&message["content"])))
            .sum::<u64>();

    let last_user = messages
        .iter()
        .rev()
        .find(|message| message["role"] == "user")
        .map(|message| text_of(&message["content"]))
        .unwrap_or_default();
    let answer = if last_user.trim().is_empty() {
        "(nothing to echo)".to_owned()
    } else {
        last_user
    };

    let mut pieces = words(&answer);
    let limit = max_tokens.map_or(usize::MAX, |max| usize::try_from(max).unwrap_or(usize::MAX));
    let truncated = pieces.len() > limit;
    pieces.truncate(limit);

    // A cut answer ends at its last word, not at the space that followed it.
    if truncated {
        if let Some(last) = pieces.last_mut() {
            last.truncate(last.trim_end().len());
        }
    }

    Reply {
        pieces,
        prompt_tokens,
        truncated,
    }
}

/// `text` in pieces of one word each, with the whitespace after it (and any before
/// the first word), so that joined they give `text` back.
fn words(text: &str) -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    let mut after_space = false;

    for ch in text.chars() {
        let starts_word = after_space && !ch.is_whitespace();
        match pieces.last_mut() {
            Some(last) if !(starts_word && last.chars().any(|c| !c.is_whitespace())) => {
                last.push(ch);
            }
            _ => pieces.push(ch.to_string()),
        }
        after_space = ch.is_whitespace();
    }
    pieces
}

/// The text of a message's content: a string, or the `text` of its text parts
/// (both APIs write parts as `{"type":"text","text":…}`).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part["type"] == "text")
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn echoes_the_last_user_message_in_pieces() {
        let messages = [
            json!({"role": "user", "content": "first"}),
            json!({"role": "assistant", "content": "ok"}),
            json!({"role": "user", "content": [{"type": "text", "text": "Hello there"}]}),
        ];

        let reply = reply(Some(&json!("be brief")), &messages, None);

        assert_eq!(reply.text(), "Hello there");
        assert_eq!(reply.pieces, ["Hello ", "there"]);
        assert_eq!(reply.prompt_tokens, 6);
        assert!(!reply.truncated);
    }

    #[test]
    fn the_token_limit_cuts_the_answer() {
        let messages = [json!({"role": "user", "content": "one two three"})];

        let reply = reply(None, &messages, Some(2));

        assert_eq!(reply.text(), "one two");
        assert_eq!(reply.pieces, ["one ", "two"]);
        assert_eq!(reply.completion_tokens(), 2);
        assert!(reply.truncated);
    }

    #[test]
    fn pieces_are_words_with_the_spacing_after_them() {
        assert_eq!(words("  a  b\nc "), ["  a  ", "b\n", "c "]);
        assert_eq!(words("one"), ["one"]);
        assert!(words("").is_empty());

        let messages = [json!({"role": "user", "content": "a  b   c"})];
        let reply = reply(None, &messages, Some(2));
        assert_eq!(reply.text(), "a  b");
    }
}
