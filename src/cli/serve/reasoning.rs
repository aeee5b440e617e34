//! `--reasoning-parser qwen3`: a reply that opens with `<think>` has its thinking, up to
//! `</think>`, returned as `reasoning_content` and the rest as `content` (as vLLM's Qwen3
//! parser does). It works on streamed text: a tag split across tokens is held back until it
//! is whole or cannot be one.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: whether the reply thinks is not known.
    Start,
    Thinking,
    Answering,
}

#[derive(Debug)]
pub struct ReasoningSplitter {
    state: State,
    held: String,
}

/// Text for `reasoning_content` and for `content`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

impl Default for ReasoningSplitter {
    fn default() -> ReasoningSplitter {
        ReasoningSplitter { state: State::Start, held: String::new() }
    }
}

impl ReasoningSplitter {
    /// Takes the next piece of the reply; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> Split {
        self.held.push_str(text);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Start => {
                    let trimmed = self.held.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                    } else if trimmed.is_empty() || OPEN.starts_with(trimmed) {
                        return out;
                    } else {
                        self.state = State::Answering;
                    }
                }
                State::Thinking => match self.held.find(CLOSE) {
                    Some(at) => {
                        out.reasoning.push_str(&self.held[..at]);
                        self.held = self.held[at + CLOSE.len()..].to_string();
                        self.state = State::Answering;
                    }
                    None => {
                        let keep = partial_tag_len(&self.held, CLOSE);
                        let shown = self.held.len() - keep;
                        out.reasoning.push_str(&self.held[..shown]);
                        self.held.drain(..shown);
                        return out;
                    }
                },
                State::Answering => {
                    out.content.push_str(&self.held);
                    self.held.clear();
                    return out;
                }
            }
        }
    }

    /// The reply has ended: what was held back (a reply cut off while thinking keeps its
    /// thinking as reasoning).
    pub fn finish(&mut self) -> Split {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Thinking => Split { reasoning: held, content: String::new() },
            State::Start | State::Answering => Split { reasoning: String::new(), content: held },
        }
    }
}

/// The length of the longest end of `text` that begins `tag` (a tag that may be completing).
fn partial_tag_len(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&str]) -> (String, String) {
        let mut s = ReasoningSplitter::default();
        let (mut reasoning, mut content) = (String::new(), String::new());
        for piece in pieces.iter().copied() {
            let out = s.push(piece);
            reasoning += &out.reasoning;
            content += &out.content;
        }
        let out = s.finish();
        (reasoning + &out.reasoning, content + &out.content)
    }

    #[test]
    fn thinking_is_split_from_the_answer_even_with_tags_across_pieces() {
        let want = ("\nhmm, 2+2\n".to_string(), "\n\nIt is 4.".to_string());
        assert_eq!(split(&["<think>\nhmm, 2+2\n</think>\n\nIt is 4."]), want);
        assert_eq!(split(&["<th", "ink>\nhmm, 2", "+2\n</", "think", ">\n\nIt is 4."]), want);
        assert_eq!(split(&["\n", "<think>", "a<b", "</think>", "c"]), ("a<b".into(), "c".into()));
    }

    #[test]
    fn a_reply_without_thinking_is_all_content_and_a_cut_off_one_all_reasoning() {
        assert_eq!(split(&["Hello ", "<think>there"]), (String::new(), "Hello <think>there".into()));
        assert_eq!(split(&["<", "b>bold"]), (String::new(), "<b>bold".into()));
        assert_eq!(split(&["<think>still going </th"]), ("still going </th".into(), String::new()));
        assert_eq!(split(&["  "]), (String::new(), "  ".into()));
    }
}
