//! Splitting an `args:` string into words, like a shell would (quotes, no expansion).

use crate::diagnostics::Problem;

/// Splits on whitespace; `'...'` is literal, `"..."` allows `\"` and `\\`, and a backslash
/// outside quotes escapes the next character.
pub(crate) fn split(text: &str) -> Result<Vec<String>, Problem> {
    let mut words = Vec::new();
    // `None` between words; `Some` once a word has started, even if empty (`''`).
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err(unterminated('\'', text)),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => return Err(unterminated('"', text)),
                        },
                        Some(c) => current.push(c),
                        None => return Err(unterminated('"', text)),
                    }
                }
            }
            '\\' => {
                let current = word.get_or_insert_with(String::new);
                // A trailing backslash stands for itself.
                current.push(chars.next().unwrap_or('\\'));
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

fn unterminated(quote: char, text: &str) -> Problem {
    Problem::new(
        format!("unterminated {quote} quote in args `{text}`"),
        "close the quote, or give `args` as a list of strings".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_quotes() {
        let words = split(r#"--name 'my node'  -x "a \"b\" c" it\'s ''"#).unwrap();
        assert_eq!(words, ["--name", "my node", "-x", r#"a "b" c"#, "it's", ""]);
        assert_eq!(split("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split("a'b'c").unwrap(), ["abc"]);
    }

    #[test]
    fn unterminated_quote() {
        let problem = split("--name 'oops").unwrap_err();
        assert_eq!(problem.message, "unterminated ' quote in args `--name 'oops`");
    }
}
