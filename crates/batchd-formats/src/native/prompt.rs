//! Chat templates in raw prompts parsed back into turns: Llama 3 header tokens, the
//! Llama 2 / Mistral `[INST]` form, and Titan's `User:` / `Bot:` convention.
//!
//! Backends apply their own chat template to a chat, so a prompt that already carries one is
//! split into its system, user and assistant texts instead of being sent as one user message
//! full of foreign special tokens. Parsing is lenient (a broken template never fails a record):
//! turns with no text are dropped, a final empty assistant header (the generation cue) is
//! dropped, and an unknown role counts as the user.

use crate::neutral::Role;

/// The turns of a prompt: system texts, then the conversation in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Turns {
    pub system: Vec<String>,
    pub messages: Vec<(Role, String)>,
}

impl Turns {
    fn push(&mut self, role: Role, text: &str) {
        let text = text.trim();
        if !text.is_empty() {
            self.messages.push((role, text.to_owned()));
        }
    }

    fn push_system(&mut self, text: &str) {
        let text = text.trim();
        if !text.is_empty() {
            self.system.push(text.to_owned());
        }
    }
}

const BEGIN_OF_TEXT: &str = "<|begin_of_text|>";
const END_OF_TEXT: &str = "<|end_of_text|>";
const HEADER_START: &str = "<|start_header_id|>";
const HEADER_END: &str = "<|end_header_id|>";
/// End of turn, and end of message (a turn that continues after a tool call).
const TURN_ENDS: [&str; 2] = ["<|eot_id|>", "<|eom_id|>"];

/// A Llama 3 prompt (`<|start_header_id|>role<|end_header_id|>\n\ntext<|eot_id|>`…), or
/// `None` when the prompt has no header token. Roles `system`, `user`, `assistant`; others
/// (`ipython`, `tool`) become user text. Text outside any header is user text.
pub fn llama3(prompt: &str) -> Option<Turns> {
    if !prompt.contains(HEADER_START) {
        return None;
    }
    let mut turns = Turns::default();
    let mut segments = prompt.split(HEADER_START);
    if let Some(head) = segments.next() {
        turns.push(Role::User, &strip_markers(head));
    }
    for segment in segments {
        let Some((role, rest)) = segment.split_once(HEADER_END) else {
            // A header that never closes: keep its text rather than lose it.
            turns.push(Role::User, &strip_markers(segment));
            continue;
        };
        let end = TURN_ENDS
            .iter()
            .filter_map(|marker| rest.find(marker))
            .min()
            .unwrap_or(rest.len());
        let content = strip_markers(rest.get(..end).unwrap_or(rest));
        match role.trim() {
            "system" => turns.push_system(&content),
            "assistant" => turns.push(Role::Assistant, &content),
            _ => turns.push(Role::User, &content),
        }
    }
    Some(turns)
}

/// Removes Llama 3 markers that carry no text.
fn strip_markers(text: &str) -> String {
    let mut out = text.replace(BEGIN_OF_TEXT, "").replace(END_OF_TEXT, "");
    for marker in TURN_ENDS {
        if out.contains(marker) {
            out = out.replace(marker, "");
        }
    }
    out
}

/// An `[INST]` prompt (Llama 2, Mistral): `<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST]
/// answer</s><s>[INST] user [/INST]`, or `None` when the prompt has no `[INST]`. `<<SYS>>`
/// blocks and Mistral's `[SYSTEM_PROMPT]` blocks are system text; text before the first
/// `[INST]` is system text too (Mistral prompts put instructions there).
pub fn inst(prompt: &str) -> Option<Turns> {
    if !prompt.contains("[INST]") {
        return None;
    }
    let cleaned = prompt.replace("<s>", "").replace("</s>", "");
    let mut turns = Turns::default();
    let mut chunks = cleaned.split("[INST]");
    if let Some(head) = chunks.next() {
        let rest = take_blocks(head, "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", &mut turns);
        turns.push_system(&rest);
    }
    for chunk in chunks {
        let (user, answer) = chunk.split_once("[/INST]").unwrap_or((chunk, ""));
        let user = take_blocks(user, "<<SYS>>", "<</SYS>>", &mut turns);
        let user = take_blocks(&user, "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", &mut turns);
        turns.push(Role::User, &user);
        turns.push(Role::Assistant, answer);
    }
    Some(turns)
}

/// Moves every `open … close` block of `text` into the system texts; returns the rest. An
/// unclosed block runs to the end of the text.
fn take_blocks(text: &str, open: &str, close: &str, turns: &mut Turns) -> String {
    let mut rest = String::new();
    let mut tail = text;
    while let Some(start) = tail.find(open) {
        rest.push_str(tail.get(..start).unwrap_or_default());
        let after = tail.get(start + open.len()..).unwrap_or_default();
        let (block, next) = after.split_once(close).unwrap_or((after, ""));
        turns.push_system(block);
        tail = next;
    }
    rest.push_str(tail);
    rest
}

/// A Titan Text prompt in its `User: …\nBot:` convention, or `None` when the prompt does not
/// follow it (some line starts with `User:` and the prompt ends with `Bot:`). Lines starting
/// with `User:` or `Bot:` open turns; text before the first turn joins the first user turn.
pub fn titan(prompt: &str) -> Option<Turns> {
    let trimmed = prompt.trim_end();
    if !trimmed.ends_with("Bot:") || !trimmed.lines().any(|l| l.starts_with("User:")) {
        return None;
    }
    let mut turns = Turns::default();
    let mut role = Role::User;
    let mut text = String::new();
    for line in trimmed.split('\n') {
        let opened = if let Some(rest) = line.strip_prefix("User:") {
            Some((Role::User, rest))
        } else {
            line.strip_prefix("Bot:")
                .map(|rest| (Role::Assistant, rest))
        };
        match opened {
            // Text before the first turn stays in the buffer of the first user turn.
            Some((Role::User, rest)) if turns.messages.is_empty() && role == Role::User => {
                if !text.trim().is_empty() {
                    text.push('\n');
                }
                text.push_str(rest.trim_start());
            }
            Some((next, rest)) => {
                turns.push(role, &text);
                role = next;
                text = rest.to_owned();
            }
            None => {
                text.push('\n');
                text.push_str(line);
            }
        }
    }
    turns.push(role, &text);
    Some(turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `turns` split into exactly `system` and `messages`.
    fn assert_turns(turns: Option<Turns>, system: &[&str], messages: &[(Role, &str)]) {
        let turns = turns.expect("a template");
        assert_eq!(turns.system, system);
        let got: Vec<(Role, &str)> = turns
            .messages
            .iter()
            .map(|(r, t)| (*r, t.as_str()))
            .collect();
        assert_eq!(got, messages);
    }

    #[test]
    fn llama3_single_user_turn() {
        assert_turns(
            llama3(
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            &[],
            &[(Role::User, "Hello there")],
        );
    }

    #[test]
    fn llama3_system_and_multi_turn() {
        let p = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
                 <|start_header_id|>ipython<|end_header_id|>\n\n{\"t\": 3}<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\nSure,";
        assert_turns(
            llama3(p),
            &["Be brief."],
            &[
                (Role::User, "Hi"),
                (Role::Assistant, "Hello!"),
                (Role::User, "{\"t\": 3}"),
                (Role::User, "Bye"),
                (Role::Assistant, "Sure,"),
            ],
        );
    }

    #[test]
    fn llama3_broken_header_keeps_text() {
        assert_turns(
            llama3("intro<|start_header_id|>user never closed"),
            &[],
            &[(Role::User, "intro"), (Role::User, "user never closed")],
        );
        assert_eq!(llama3("plain text"), None);
    }

    #[test]
    fn inst_llama2_with_sys_and_history() {
        let p = "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nFirst question [/INST] First answer </s><s>[INST] Second question [/INST]";
        assert_turns(
            inst(p),
            &["You are terse."],
            &[
                (Role::User, "First question"),
                (Role::Assistant, "First answer"),
                (Role::User, "Second question"),
            ],
        );
    }

    #[test]
    fn inst_mistral_forms() {
        assert_turns(
            inst("<s>[INST] What is 2+2? [/INST]"),
            &[],
            &[(Role::User, "What is 2+2?")],
        );
        assert_turns(
            inst("<s>[SYSTEM_PROMPT]Sys[/SYSTEM_PROMPT][INST]Hi[/INST]Yo</s>[INST]More"),
            &["Sys"],
            &[
                (Role::User, "Hi"),
                (Role::Assistant, "Yo"),
                (Role::User, "More"),
            ],
        );
        assert_eq!(inst("no template"), None);
    }

    #[test]
    fn titan_user_bot() {
        assert_turns(
            titan("User: AWS Lambda?\nBot:"),
            &[],
            &[(Role::User, "AWS Lambda?")],
        );
        assert_turns(
            titan("Context line\nUser: hi\nmore\nBot: hello\nUser: bye\nBot:"),
            &[],
            &[
                (Role::User, "Context line\nhi\nmore"),
                (Role::Assistant, "hello"),
                (Role::User, "bye"),
            ],
        );
        assert_eq!(titan("Tell me a joke"), None);
        assert_eq!(titan("User: no cue at the end"), None);
    }
}
