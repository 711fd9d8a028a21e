//! Console text from `output_raw` fragments, rebuilt the way a terminal shows
//! it: `\r` returns to the start of the line so a progress bar rewrites itself,
//! `\n` starts a new line, backspace and the common cursor escapes (up, down,
//! erase line) move or clear, colours and styles (SGR, `ESC [ … m`) stay in
//! the text for W&B's log viewer to render, other escape sequences are
//! dropped.
//!
//! Escape sequences are recognised by `vte`, the state machine of DEC's
//! terminals that terminal emulators use, so an OSC string (`ESC ] 0;title
//! BEL`, which tqdm and shells print to set a window title), a DCS string or
//! a CSI with intermediates is dropped whole, never shown as text. A sequence
//! cut by the end of a fragment is kept as its raw bytes (`pending_escape`,
//! bounded) and fed again before the next fragment, so a checkpoint stores
//! plain bytes and not the parser.
//!
//! stdout and stderr each have their own cursor but share one line numbering,
//! as in `output.log`. Only the last [`WINDOW`] lines of each stream can still
//! change; older lines are final, so memory stays bounded however long the
//! run prints.

use std::collections::VecDeque;

/// How many recent lines of a stream a cursor movement can still reach.
pub(crate) const WINDOW: usize = 32;

/// A line reaching this many characters continues on the next line, as on
/// a terminal that wraps. Why: a run can print megabytes without a newline
/// (or move the cursor to column 10^9); held whole, such a line would take
/// four bytes a character in the window and in every checkpoint, and would
/// be over the server's line limit (10 MiB) anyway. Wrapped, the window
/// stays under `2 · WINDOW · MAX_LINE_CHARS` characters and every line fits
/// in a request.
pub(crate) const MAX_LINE_CHARS: usize = 256 * 1024;

/// An unfinished escape sequence longer than this is dropped and the
/// parser starts over. Why: the bytes of an unfinished sequence are held
/// (and checkpointed) until it ends; a run that prints `ESC ]` and then
/// megabytes without a terminator must not make them grow without bound.
const MAX_PENDING_ESCAPE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of console output as it should be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLine {
    /// 0-based line number in the run's console log.
    pub index: u64,
    pub stream: Stream,
    pub text: String,
}

#[derive(Debug, Clone, Default)]
struct Cursor {
    /// Global indexes of this stream's recent lines, oldest first.
    rows: VecDeque<u64>,
    /// Position within `rows` of the cursor's line. `rows.len()` means the
    /// line after the last one, which is created only when text arrives, so a
    /// trailing `\n` does not leave an empty line behind.
    row: usize,
    col: usize,
    /// The escape parser and the bytes of the sequence it is inside.
    escapes: Escapes,
}

/// A stream's escape-sequence parser with the raw bytes it has taken since
/// its last action, which are exactly the unfinished sequence (empty
/// between sequences).
#[derive(Default)]
struct Escapes {
    parser: vte::Parser,
    pending: Vec<u8>,
}

impl Escapes {
    /// A parser in the state the bytes of an unfinished sequence leave it.
    fn resumed(pending: &[u8]) -> Escapes {
        let mut escapes = Escapes::default();
        let mut ignore = Silent;
        escapes.parser.advance(&mut ignore, pending);
        escapes.pending = pending.to_vec();
        escapes
    }
}

impl Clone for Escapes {
    fn clone(&self) -> Escapes {
        Escapes::resumed(&self.pending)
    }
}

impl std::fmt::Debug for Escapes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Escapes")
            .field("pending", &String::from_utf8_lossy(&self.pending))
            .finish()
    }
}

/// A performer for replaying an unfinished sequence, which by definition
/// completes no action.
struct Silent;
impl vte::Perform for Silent {}

/// A line still inside some stream's window.
#[derive(Debug, Clone)]
struct Line {
    index: u64,
    stream: Stream,
    text: Vec<char>,
}

/// Window, cursors and numbering: what a checkpoint keeps so that it can
/// continue the console (see [`Console::parts`]).
#[derive(Debug, Clone, Default)]
pub struct Console {
    /// Text of lines still inside some stream's window, by global index.
    lines: VecDeque<Line>,
    first_index: u64,
    next_index: u64,
    stdout: Cursor,
    stderr: Cursor,
    /// Lines changed since the last [`Console::take_changed`], by index.
    changed: std::collections::BTreeSet<u64>,
    /// Changed lines that left the window before they were taken.
    finished_unsent: Vec<ConsoleLine>,
    finished_unsent_bytes: usize,
}

/// A [`Console`]'s whole state as plain data, for a checkpoint to store:
/// [`Console::parts`] gives it, [`Console::from_parts`] takes it back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleParts {
    /// Lines still inside some stream's window, oldest first.
    pub lines: Vec<ConsoleLine>,
    pub first_index: u64,
    pub next_index: u64,
    pub stdout: CursorParts,
    pub stderr: CursorParts,
    /// Lines changed and not yet taken, by index, ascending.
    pub changed: Vec<u64>,
    pub finished_unsent: Vec<ConsoleLine>,
    pub finished_unsent_bytes: usize,
}

/// One stream's cursor in [`ConsoleParts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorParts {
    /// Indexes of the stream's recent lines, oldest first.
    pub rows: Vec<u64>,
    /// Position of the cursor's line within `rows` (`rows.len()`: the
    /// line after the last).
    pub row: usize,
    pub col: usize,
    pub pending_escape: String,
}

impl Cursor {
    fn parts(&self) -> CursorParts {
        CursorParts {
            rows: self.rows.iter().copied().collect(),
            row: self.row,
            col: self.col,
            pending_escape: String::from_utf8_lossy(&self.escapes.pending).into_owned(),
        }
    }

    fn from_parts(parts: CursorParts, lines: std::ops::Range<u64>) -> Result<Cursor, String> {
        if parts.row > parts.rows.len() {
            return Err(format!(
                "a cursor on row {} of {}",
                parts.row,
                parts.rows.len()
            ));
        }
        if parts.rows.iter().any(|r| !lines.contains(r)) {
            return Err("a cursor on a line the console no longer holds".into());
        }
        Ok(Cursor {
            rows: parts.rows.into(),
            row: parts.row,
            col: parts.col,
            escapes: Escapes::resumed(parts.pending_escape.as_bytes()),
        })
    }
}

/// The console as the parser's performer for one stream's fragment.
struct Terminal<'a> {
    console: &'a mut Console,
    stream: Stream,
    /// Whether the last byte completed an action.
    acted: bool,
}

impl vte::Perform for Terminal<'_> {
    fn print(&mut self, c: char) {
        self.acted = true;
        self.console.put(self.stream, c);
    }

    fn execute(&mut self, byte: u8) {
        self.acted = true;
        match byte {
            b'\n' => self.console.newline(self.stream),
            b'\r' => self.console.cursor(self.stream).col = 0,
            0x08 => {
                let cur = self.console.cursor(self.stream);
                cur.col = cur.col.saturating_sub(1);
            }
            b'\t' => self.console.put(self.stream, '\t'),
            _ => {} // bell and the other controls do not change the text
        }
    }

    fn csi_dispatch(&mut self, params: &vte::Params, intermediates: &[u8], ignore: bool, c: char) {
        self.acted = true;
        // A private (`ESC [ ? 25 l`) or overlong sequence is not a cursor
        // movement of the kinds below.
        if ignore || !intermediates.is_empty() {
            return;
        }
        if c == 'm' {
            // Colours and styles stay in the text, as the official client
            // keeps them: W&B's log viewer renders them.
            let mut sequence = String::from("\u{1b}[");
            for (i, param) in params.iter().enumerate() {
                if i > 0 {
                    sequence.push(';');
                }
                for (j, sub) in param.iter().enumerate() {
                    if j > 0 {
                        sequence.push(':');
                    }
                    sequence.push_str(&sub.to_string());
                }
            }
            sequence.push('m');
            for c in sequence.chars() {
                self.console.put(self.stream, c);
            }
            return;
        }
        let first = params.iter().next().and_then(|p| p.first()).copied();
        self.console.csi(self.stream, first.unwrap_or(0), c);
    }

    fn esc_dispatch(&mut self, _intermediates: &[u8], _ignore: bool, _byte: u8) {
        self.acted = true;
    }

    fn osc_dispatch(&mut self, _params: &[&[u8]], _bell_terminated: bool) {
        self.acted = true;
    }

    fn hook(&mut self, _params: &vte::Params, _intermediates: &[u8], _ignore: bool, _c: char) {
        self.acted = true;
    }

    fn put(&mut self, _byte: u8) {
        self.acted = true;
    }

    fn unhook(&mut self) {
        self.acted = true;
    }
}

impl Console {
    pub fn new() -> Self {
        Self::default()
    }

    /// The console's state, to store.
    pub fn parts(&self) -> ConsoleParts {
        ConsoleParts {
            lines: self.recent().collect(),
            first_index: self.first_index,
            next_index: self.next_index,
            stdout: self.stdout.parts(),
            stderr: self.stderr.parts(),
            changed: self.changed.iter().copied().collect(),
            finished_unsent: self.finished_unsent.clone(),
            finished_unsent_bytes: self.finished_unsent_bytes,
        }
    }

    /// The console [`Console::parts`] gave, or why `parts` cannot be one:
    /// the held lines are numbered `first_index..next_index` in order and
    /// each cursor is on one of them or just past its stream's last.
    pub fn from_parts(parts: ConsoleParts) -> Result<Console, String> {
        let held = parts.first_index..parts.next_index;
        let numbered = parts.next_index.checked_sub(parts.first_index)
            == Some(parts.lines.len() as u64)
            && parts
                .lines
                .iter()
                .zip(held.clone())
                .all(|(line, index)| line.index == index);
        if !numbered {
            return Err(format!(
                "console lines are not numbered {}..{}",
                parts.first_index, parts.next_index
            ));
        }
        Ok(Console {
            lines: parts
                .lines
                .into_iter()
                .map(|line| Line {
                    index: line.index,
                    stream: line.stream,
                    text: line.text.chars().collect(),
                })
                .collect(),
            first_index: parts.first_index,
            next_index: parts.next_index,
            stdout: Cursor::from_parts(parts.stdout, held.clone())?,
            stderr: Cursor::from_parts(parts.stderr, held)?,
            changed: parts.changed.into_iter().collect(),
            finished_unsent: parts.finished_unsent,
            finished_unsent_bytes: parts.finished_unsent_bytes,
        })
    }

    /// Number of lines the console log has so far.
    pub fn line_count(&self) -> u64 {
        self.next_index
    }

    /// Feeds one `output_raw` fragment.
    pub fn write(&mut self, stream: Stream, text: &str) {
        // The parser is taken out of the cursor for the length of the
        // fragment so that the performer can borrow the whole console.
        let mut escapes = std::mem::take(&mut self.cursor(stream).escapes);
        let mut terminal = Terminal {
            console: self,
            stream,
            acted: false,
        };
        // One byte at a time: after each, the parser either completed an
        // action (the sequence, if any, is over) or holds the byte inside
        // an unfinished one, which is what `pending` must contain.
        for &byte in text.as_bytes() {
            terminal.acted = false;
            escapes.parser.advance(&mut terminal, &[byte]);
            if terminal.acted {
                escapes.pending.clear();
            } else if escapes.pending.len() < MAX_PENDING_ESCAPE {
                escapes.pending.push(byte);
            } else {
                escapes = Escapes::default();
            }
        }
        self.cursor(stream).escapes = escapes;
    }

    /// A control sequence: `first` is its first parameter (0 when left
    /// out, as terminals read it).
    fn csi(&mut self, stream: Stream, first: u16, command: char) {
        let n = usize::from(first).max(1);
        match command {
            'A' => {
                let cur = self.cursor(stream);
                cur.row = cur.row.saturating_sub(n);
            }
            'B' => {
                for _ in 0..n {
                    if self.current_index(stream).is_none() {
                        self.open_line(stream);
                    }
                    self.cursor(stream).row += 1;
                }
            }
            'G' => self.cursor(stream).col = n - 1,
            'K' => {
                let mode = first;
                let col = self.cursor(stream).col;
                let index = self.current_index(stream);
                if let Some(line) = self.current_line(stream) {
                    match mode {
                        0 => line.truncate(col),
                        1 => line.iter_mut().take(col + 1).for_each(|c| *c = ' '),
                        _ => line.clear(),
                    }
                    self.changed.extend(index);
                }
            }
            _ => {} // the rest does not change the text
        }
    }

    fn cursor(&mut self, stream: Stream) -> &mut Cursor {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    fn current_index(&mut self, stream: Stream) -> Option<u64> {
        let cur = self.cursor(stream);
        cur.rows.get(cur.row).copied()
    }

    fn current_line(&mut self, stream: Stream) -> Option<&mut Vec<char>> {
        let index = self.current_index(stream)?;
        let pos = index.checked_sub(self.first_index)? as usize;
        self.lines.get_mut(pos).map(|line| &mut line.text)
    }

    fn put(&mut self, stream: Stream, c: char) {
        if self.cursor(stream).col >= MAX_LINE_CHARS {
            if self.current_index(stream).is_some() {
                self.newline(stream);
            } else {
                self.cursor(stream).col = 0;
            }
        }
        if self.current_index(stream).is_none() {
            let col = self.cursor(stream).col;
            self.open_line(stream);
            self.cursor(stream).col = col;
        }
        let col = self.cursor(stream).col;
        let index = self.current_index(stream);
        if let Some(line) = self.current_line(stream) {
            if line.len() < col {
                line.resize(col, ' ');
            }
            if col < line.len() {
                line[col] = c;
            } else {
                line.push(c);
            }
        }
        self.changed.extend(index);
        self.cursor(stream).col += 1;
    }

    fn newline(&mut self, stream: Stream) {
        if self.current_index(stream).is_none() {
            // Two newlines in a row: the line between them exists, empty.
            self.open_line(stream);
        }
        let cur = self.cursor(stream);
        cur.row += 1;
        cur.col = 0;
    }

    /// Appends a new line for `stream` and puts its cursor at its start.
    fn open_line(&mut self, stream: Stream) {
        let index = self.next_index;
        self.next_index += 1;
        self.lines.push_back(Line {
            index,
            stream,
            text: Vec::new(),
        });
        self.changed.insert(index);
        let cur = self.cursor(stream);
        cur.rows.push_back(index);
        if cur.rows.len() > WINDOW {
            cur.rows.pop_front();
        }
        cur.row = cur.rows.len() - 1;
        cur.col = 0;
        self.forget_final_lines();
    }

    /// Drops lines neither cursor can reach any more.
    fn forget_final_lines(&mut self) {
        let oldest = |c: &Cursor| c.rows.front().copied().unwrap_or(u64::MAX);
        let keep_from = oldest(&self.stdout)
            .min(oldest(&self.stderr))
            .min(self.next_index);
        while self
            .lines
            .front()
            .is_some_and(|line| line.index < keep_from)
        {
            let Some(line) = self.lines.pop_front() else {
                break;
            };
            self.first_index += 1;
            if self.changed.remove(&line.index) {
                // Final now, but not yet taken: keep it until it is.
                self.finished_unsent_bytes += line.text.len() + 32;
                self.finished_unsent.push(ConsoleLine {
                    index: line.index,
                    stream: line.stream,
                    text: line.text.into_iter().collect(),
                });
            }
        }
    }

    /// Lines created or rewritten since the last call, in line order,
    /// including changed lines that have since left the window.
    pub fn take_changed(&mut self) -> Vec<ConsoleLine> {
        let changed = std::mem::take(&mut self.changed);
        let still_open: Vec<ConsoleLine> = changed
            .into_iter()
            .filter_map(|index| {
                let pos = index.checked_sub(self.first_index)? as usize;
                let line = self.lines.get(pos)?;
                Some(ConsoleLine {
                    index: line.index,
                    stream: line.stream,
                    text: line.text.iter().collect(),
                })
            })
            .collect();
        let mut all = std::mem::take(&mut self.finished_unsent);
        self.finished_unsent_bytes = 0;
        all.extend(still_open);
        all
    }

    /// Approximate bytes of changed lines not yet taken, so a caller can
    /// take them before they pile up.
    pub fn unsent_bytes(&self) -> usize {
        self.finished_unsent_bytes + self.changed.len() * 16
    }

    /// The lines still held (the most recent ones), for display.
    pub fn recent(&self) -> impl Iterator<Item = ConsoleLine> + '_ {
        self.lines.iter().map(|line| ConsoleLine {
            index: line.index,
            stream: line.stream,
            text: line.text.iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_line_wraps_and_a_far_cursor_does_not_allocate() {
        let mut console = Console::new();
        let long = "y".repeat(MAX_LINE_CHARS * 2 + 10);
        console.write(Stream::Stdout, &format!("{long}\nnext\n"));
        let lines: Vec<usize> = console
            .take_changed()
            .iter()
            .map(|l| l.text.len())
            .collect();
        assert_eq!(lines, [MAX_LINE_CHARS, MAX_LINE_CHARS, 10, 4]);
        // Parameters stop at 65,535 (as in terminals), so the farthest a
        // cursor can be sent is well inside one line's bound.
        console.write(Stream::Stdout, "\u{1b}[4000000000Gx\n");
        let lines = console.take_changed();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text.trim_start(), "x");
        assert!(lines[0].text.chars().count() <= MAX_LINE_CHARS);
    }

    #[test]
    fn osc_dcs_and_private_sequences_leave_no_text() {
        // tqdm and shells set the window title with an OSC ended by BEL or
        // by ST; DCS strings and private modes (hide the cursor) are dropped
        // whole as well.
        let out = render(&[(
            Stream::Stdout,
            "\u{1b}]0;epoch 3/10\u{7}a\u{1b}]2;title\u{1b}\\b\u{1b}P1$r0m\u{1b}\\c\u{1b}[?25ld\u{1b}[1;31me\u{1b}[0m\n",
        )]);
        assert_eq!(out, ["abcd\u{1b}[1;31me\u{1b}[0m"]);
    }

    #[test]
    fn an_osc_cut_by_a_fragment_or_a_checkpoint_still_leaves_no_text() {
        let mut console = Console::new();
        console.write(Stream::Stdout, "loss 1\u{1b}]0;ti");
        // The checkpoint holds the unfinished sequence as its bytes.
        let parts = console.parts();
        assert_eq!(parts.stdout.pending_escape, "\u{1b}]0;ti");
        let mut resumed = Console::from_parts(parts).expect("a console's own parts");
        resumed.write(Stream::Stdout, "tle\u{7} 2\n");
        console.write(Stream::Stdout, "tle\u{7} 2\n");
        assert_eq!(
            resumed.recent().map(|l| l.text).collect::<Vec<_>>(),
            ["loss 1 2"]
        );
        assert_eq!(
            console.recent().map(|l| l.text).collect::<Vec<_>>(),
            ["loss 1 2"]
        );
        assert_eq!(console.parts().stdout.pending_escape, "");
    }

    #[test]
    fn an_unterminated_sequence_is_held_bounded() {
        let mut console = Console::new();
        console.write(Stream::Stdout, "\u{1b}]0;");
        console.write(Stream::Stdout, &"t".repeat(3 * MAX_PENDING_ESCAPE));
        assert!(console.parts().stdout.pending_escape.len() <= MAX_PENDING_ESCAPE);
    }

    #[test]
    fn a_pending_escape_of_the_old_parser_resumes() {
        // Ledgers written before the parser was `vte` hold a CSI prefix.
        let mut parts = Console::new().parts();
        parts.stdout.pending_escape = "\u{1b}[".into();
        let mut console = Console::from_parts(parts).expect("valid parts");
        console.write(Stream::Stdout, "2Kred\n");
        assert_eq!(
            console.recent().map(|l| l.text).collect::<Vec<_>>(),
            ["red"]
        );
    }

    fn render(fragments: &[(Stream, &str)]) -> Vec<String> {
        let mut console = Console::new();
        for (stream, text) in fragments {
            console.write(*stream, text);
        }
        console.recent().map(|l| l.text).collect()
    }

    #[test]
    fn carriage_return_rewrites_the_line() {
        let out = render(&[
            (Stream::Stdout, "progress 10%"),
            (Stream::Stdout, "\rprogress 50%"),
            (Stream::Stdout, "\rprogress 100%"),
            (Stream::Stdout, "\n"),
            (Stream::Stdout, "done\n"),
        ]);
        assert_eq!(out, ["progress 100%", "done"]);
    }

    #[test]
    fn fragments_split_anywhere_join_up() {
        let out = render(&[
            (Stream::Stdout, "hel"),
            (Stream::Stdout, "lo wo"),
            (Stream::Stdout, "rld\n\n\nx"),
        ]);
        assert_eq!(out, ["hello world", "", "", "x"]);
    }

    #[test]
    fn shorter_rewrite_keeps_the_tail_like_a_terminal() {
        assert_eq!(render(&[(Stream::Stdout, "abcdef\rxy")])[0], "xycdef");
        assert_eq!(render(&[(Stream::Stdout, "abcdef\rxy\u{1b}[K")])[0], "xy");
    }

    #[test]
    fn streams_share_numbering_but_not_cursors() {
        let mut console = Console::new();
        console.write(Stream::Stdout, "out 1\n");
        console.write(Stream::Stderr, "err 1\n");
        console.write(Stream::Stdout, "out 2");
        let lines = console.take_changed();
        let texts: Vec<_> = lines
            .iter()
            .map(|l| (l.index, l.stream, l.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                (0, Stream::Stdout, "out 1"),
                (1, Stream::Stderr, "err 1"),
                (2, Stream::Stdout, "out 2"),
            ]
        );
    }

    #[test]
    fn cursor_up_rewrites_an_earlier_line_and_escapes_can_split() {
        let out = render(&[
            (Stream::Stdout, "bar 1\nbar 2\n"),
            (Stream::Stdout, "\u{1b}["),
            (Stream::Stdout, "2A\rBAR 1\n"),
        ]);
        assert_eq!(out[..2], ["BAR 1", "bar 2"]);
    }

    #[test]
    fn lines_that_leave_the_window_unsent_are_still_taken() {
        let mut console = Console::new();
        for i in 0..100 {
            console.write(Stream::Stdout, &format!("line {i}\n"));
        }
        let taken = console.take_changed();
        let indexes: Vec<u64> = taken.iter().map(|l| l.index).collect();
        assert_eq!(indexes, (0..100).collect::<Vec<_>>());
        assert_eq!(taken[7].text, "line 7");
        assert!(console.take_changed().is_empty());
    }

    #[test]
    fn a_console_rebuilt_from_its_parts_continues_the_same() {
        let mut console = Console::new();
        for i in 0..40 {
            console.write(Stream::Stdout, &format!("line {i}\n"));
        }
        console.write(Stream::Stderr, "err\nbar 10%\u{1b}[");
        let mut copy = Console::from_parts(console.parts()).unwrap();
        assert_eq!(copy.parts(), console.parts());
        for c in [&mut console, &mut copy] {
            c.write(Stream::Stderr, "1A\rERR\n");
            c.write(Stream::Stdout, "last");
        }
        assert_eq!(copy.take_changed(), console.take_changed());
        assert_eq!(copy.parts(), console.parts());
    }

    #[test]
    fn parts_that_are_not_a_console_are_refused() {
        let mut console = Console::new();
        console.write(Stream::Stdout, "a\nb\n");
        let mut parts = console.parts();
        parts.lines[1].index = 5;
        assert!(Console::from_parts(parts).is_err());
        let mut parts = console.parts();
        parts.stdout.row = 3;
        assert!(Console::from_parts(parts).is_err());
        let mut parts = console.parts();
        parts.stdout.rows.push(9);
        assert!(Console::from_parts(parts).is_err());
    }

    #[test]
    fn memory_is_bounded_by_the_window() {
        let mut console = Console::new();
        for i in 0..10_000 {
            console.write(Stream::Stdout, &format!("line {i}\n"));
            if i % 100 == 0 {
                console.take_changed();
            }
        }
        assert_eq!(console.line_count(), 10_000);
        assert!(console.recent().count() <= WINDOW + 1);
    }
}
