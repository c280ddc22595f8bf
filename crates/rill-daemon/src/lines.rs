//! Node output as lines, each at most [`MAX_LINE`] bytes: a node that prints
//! without newlines must not make the daemon buffer without end.

use std::io::BufRead;

/// Longest line kept; the rest of a longer one is dropped and the line says so.
pub const MAX_LINE: usize = rill_proto::coord::MAX_LOG_LINE;

/// Calls `each` with every line of `input` (lossy UTF-8, without the
/// newline), a line longer than `max` cut there and marked.
pub fn for_each_line(mut input: impl BufRead, max: usize, mut each: impl FnMut(&str)) {
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    loop {
        let (consumed, ended) = match input.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(buf) => match buf.iter().position(|b| *b == b'\n') {
                Some(at) => {
                    take(&mut line, &buf[..at], max, &mut cut);
                    (at + 1, true)
                }
                None => {
                    take(&mut line, buf, max, &mut cut);
                    (buf.len(), false)
                }
            },
        };
        input.consume(consumed);
        if ended {
            emit(&mut line, max, &mut cut, &mut each);
        }
    }
    if !line.is_empty() || cut {
        emit(&mut line, max, &mut cut, &mut each);
    }
}

fn take(line: &mut Vec<u8>, bytes: &[u8], max: usize, cut: &mut bool) {
    let room = max.saturating_sub(line.len());
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    *cut |= bytes.len() > room;
}

fn emit(line: &mut Vec<u8>, max: usize, cut: &mut bool, each: &mut impl FnMut(&str)) {
    let mut text = String::from_utf8_lossy(line).into_owned();
    if text.ends_with('\r') {
        text.pop();
    }
    if *cut {
        text.push_str(&cut_mark(max));
    }
    each(&text);
    line.clear();
    *cut = false;
}

fn cut_mark(max: usize) -> String {
    format!(" [line cut at {} KiB]", max / 1024)
}

/// `line` cut to at most `max` bytes (on a character boundary) and marked,
/// for a line read with a larger limit (`send_stdout_as`) shown in the log.
pub fn clip(line: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if line.len() <= max {
        return line.into();
    }
    let end = (0..=max).rev().find(|i| line.is_char_boundary(*i)).unwrap_or(0);
    format!("{}{}", &line[..end], cut_mark(max)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut out = Vec::new();
        // A tiny buffer, so lines span many reads.
        for_each_line(std::io::BufReader::with_capacity(3, input), max, |l| out.push(l.to_owned()));
        out
    }

    #[test]
    fn long_lines_are_cut_and_marked_and_the_rest_is_intact() {
        assert_eq!(lines(b"a\nbc\r\n\nlast", 10), ["a", "bc", "", "last"]);
        let long = [b"x".repeat(25), b"\nnext\n".to_vec()].concat();
        let cut = lines(&long, 10);
        assert_eq!(cut[0], format!("xxxxxxxxxx{}", cut_mark(10)));
        assert_eq!(cut[1], "next");
        assert_eq!(lines(&b"y".repeat(12), 10).len(), 1, "an unterminated long tail is one line");
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip(&"é".repeat(3000), 4096), format!("{} [line cut at 4 KiB]", "é".repeat(2048)));
    }
}
