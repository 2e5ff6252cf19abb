//! WebVTT subtitles: parse what uploaders give at ingest, write it back
//! normalised, and cut it into HLS subtitle segments.
//!
//! The bytes are untrusted. [`parse`] refuses an oversized file before doing
//! any work, caps the number of cues and the size of each, keeps timestamps
//! below [`MAX_TIMESTAMP_MS`] so sums of them cannot overflow, and never
//! panics. Its errors name the line, for the uploader.
//!
//! What it accepts follows the WHATWG WebVTT parser where browsers are
//! lenient in a harmless way: one-digit hours, any whitespace (or none)
//! around `-->`, a cue straight after the header without a blank line, cue
//! settings it does not know. It refuses where a browser would silently lose
//! or garble content: a block with no timing line (a mistyped `->`, say),
//! `-->` inside cue text (a missing blank line), STYLE or REGION after the
//! first cue, a cue that does not end after it starts. One deliberate
//! difference: a line of only spaces and tabs counts as blank, because
//! uploaded files are full of them between cues.
//!
//! [`serialize`] writes the normalised file that is stored; the edge parses
//! it again for every [`segment`] it cuts. Normalising never makes a file
//! [`parse`] would refuse: `parse(serialize(v)) == v` for every `v` that
//! [`parse`] returns.

use std::fmt;
use std::mem;

/// The largest file [`parse`] reads, in bytes (4 MiB: hours of dense
/// subtitles). The normalised file must fit too.
pub const MAX_VTT_BYTES: usize = 4 << 20;

/// The most cues [`parse`] accepts in one file.
pub const MAX_CUES: usize = 100_000;

/// The longest text of one cue, in bytes (64 KiB). STYLE and REGION blocks
/// are held to the same size.
pub const MAX_CUE_TEXT_BYTES: usize = 64 << 10;

/// The most lines of text one cue may have.
pub const MAX_CUE_LINES: usize = 100;

/// Timestamps must be below this many milliseconds (2^40 ms, about 34
/// years), so that adding a few of them can never overflow a `u64`.
pub const MAX_TIMESTAMP_MS: u64 = 1 << 40;

/// One cue: text shown from `start_ms` until `end_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cue {
    /// The cue's identifier line, if it has one.
    pub id: Option<String>,
    /// When the cue appears, in milliseconds on the file's timeline.
    pub start_ms: u64,
    /// When it goes away, in milliseconds; after `start_ms`.
    pub end_ms: u64,
    /// Cue settings such as `align:start line:90%`, separated by single
    /// spaces; empty for none. Kept as written, known or not.
    pub settings: String,
    /// The cue payload, its lines joined with `\n`, markup (`<i>`, `&amp;`)
    /// as written.
    pub text: String,
}

/// A parsed WebVTT file. NOTE blocks and the header's text are not kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebVtt {
    /// The CSS of each STYLE block, in file order, without the `STYLE` line;
    /// lines joined with `\n`.
    pub styles: Vec<String>,
    /// The settings of each REGION block, in file order, without the
    /// `REGION` line; lines joined with `\n`.
    pub regions: Vec<String>,
    /// The cues, sorted by start time; cues that start together keep their
    /// file order.
    pub cues: Vec<Cue>,
}

/// Why [`parse`] refused a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct VttError {
    /// The line at fault, from 1; 0 when the fault is the file's size.
    pub line: usize,
    /// What is wrong, in words for the uploader.
    pub reason: &'static str,
}

impl VttError {
    const fn new(line: usize, reason: &'static str) -> Self {
        VttError { line, reason }
    }
}

impl fmt::Display for VttError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(self.reason)
        } else {
            write!(f, "line {}: {}", self.line, self.reason)
        }
    }
}

impl std::error::Error for VttError {}

impl From<VttError> for crate::Error {
    fn from(e: VttError) -> Self {
        crate::Error::Malformed(e.reason)
    }
}

/// Parses a WebVTT file: UTF-8 with an optional BOM, CRLF, CR or LF line
/// endings. The cues come back sorted by start time.
pub fn parse(bytes: &[u8]) -> Result<WebVtt, VttError> {
    if bytes.len() > MAX_VTT_BYTES {
        return Err(VttError::new(0, "file is larger than 4 MiB"));
    }
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(body)
        .map_err(|e| VttError::new(line_at(body, e.valid_up_to()), "not UTF-8"))?;
    if let Some(at) = text.find('\0') {
        return Err(VttError::new(line_at(body, at), "NUL character"));
    }

    let mut lines = Lines {
        rest: text,
        number: 0,
    };
    let header_ok = lines.next().is_some_and(|(_, first)| {
        first
            .strip_prefix("WEBVTT")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    });
    if !header_ok {
        return Err(VttError::new(1, "the first line must be WEBVTT"));
    }

    let mut parser = Parser {
        out: WebVtt::default(),
        block: Block::Empty,
    };
    let mut in_header = true;
    for (number, line) in lines {
        if is_blank(line) {
            in_header = false;
            parser.end_block()?;
        } else if in_header && !line.contains(ARROW) {
            // Header metadata (`Kind:`, `Language:`): nothing players use.
        } else {
            // A timing line ends the header even without a blank line
            // before it, as in browsers.
            in_header = false;
            parser.line(number, line)?;
        }
    }
    parser.end_block()?;
    let mut out = parser.out;
    out.cues.sort_by_key(|c| c.start_ms);

    // The normalised file is what gets stored and parsed again, so it must
    // fit the same limit. Normalising adds at most 8 bytes a cue (`00:01.000`
    // becomes `00:00:01.000`, `-->` gains spaces) and a few at the ends, so
    // it is only worth measuring near the limit.
    let worst = bytes.len() + 16 * out.cues.len() + 64;
    if worst > MAX_VTT_BYTES && serialize(&out).len() > MAX_VTT_BYTES {
        return Err(VttError::new(
            0,
            "file is larger than 4 MiB once normalised",
        ));
    }
    Ok(out)
}

/// Writes `v` as a normalised file: a bare `WEBVTT` header, the STYLE
/// blocks, the REGION blocks, then the cues, with `hh:mm:ss.ttt` timestamps
/// and LF line endings.
///
/// A value that [`parse`] returned comes back unchanged through [`parse`].
/// A value built by hand is made well-formed: blank lines in text are
/// dropped, `-->` in text becomes `--&gt;`, an id that could not be read back
/// is left out. Its timestamps are written as they are, so a cue that does
/// not end after it starts, or a time from [`MAX_TIMESTAMP_MS`] on, is
/// written but refused by [`parse`].
pub fn serialize(v: &WebVtt) -> String {
    let mut out = String::with_capacity(estimate(&v.cues));
    out.push_str("WEBVTT\n\n");
    for body in &v.styles {
        push_block(&mut out, "STYLE", body);
    }
    for body in &v.regions {
        push_block(&mut out, "REGION", body);
    }
    for cue in &v.cues {
        push_cue(&mut out, cue);
    }
    out
}

/// One HLS WebVTT segment: the header that maps the file's time zero to
/// `mpegts` (90 kHz) and every cue that overlaps `[start_ms, end_ms)`, times
/// unchanged. A cue that spans several segments is in each of them; players
/// de-duplicate. An empty window gets the header alone. STYLE and REGION
/// blocks are not repeated in segments.
///
/// `v.cues` must be sorted by start time, as [`parse`] leaves them; if not,
/// some overlapping cues may be missed (never a panic). A binary search skips
/// the cues that start at or after `end_ms`; every cue before that is
/// checked, because one that started long before may still be showing. That
/// is O(n) comparisons at worst, microseconds for a file of a few thousand
/// cues, so fine per request; cutting every segment of a title is
/// O(n × segments).
pub fn segment(v: &WebVtt, start_ms: u64, end_ms: u64, mpegts: u64) -> String {
    let started = v.cues.partition_point(|c| c.start_ms < end_ms);
    let overlapping = v
        .cues
        .iter()
        .take(started)
        .filter(|c| start_ms < end_ms && c.end_ms > start_ms);
    let mut out = String::with_capacity(256);
    out.push_str("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:");
    out.push_str(&mpegts.to_string());
    out.push_str(",LOCAL:00:00:00.000\n\n");
    for cue in overlapping {
        push_cue(&mut out, cue);
    }
    out
}

/// Formats `ms` as a WebVTT timestamp `hh:mm:ss.ttt`; hours take as many
/// digits as they need, at least two. Any `u64` is fine.
pub fn timestamp(ms: u64) -> String {
    let hours = ms / 3_600_000;
    let rest = ms % 3_600_000;
    format!(
        "{hours:02}:{:02}:{:02}.{:03}",
        rest / 60_000,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// Separates a cue's start and end times; no id, text or setting holds it.
const ARROW: &str = "-->";

/// The file's lines, numbered from 1, split at CRLF, CR or LF.
struct Lines<'a> {
    rest: &'a str,
    number: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<(usize, &'a str)> {
        if self.rest.is_empty() {
            return None;
        }
        self.number += 1;
        let (line, tail) = match self.rest.find(['\r', '\n']) {
            Some(at) => self.rest.split_at(at),
            None => (self.rest, ""),
        };
        // `tail` starts with the ASCII terminator, so `1..` is a char boundary.
        self.rest = tail
            .strip_prefix("\r\n")
            .or_else(|| tail.get(1..))
            .unwrap_or("");
        Some((self.number, line))
    }
}

/// Reads the blocks after the header one line at a time, so that no line
/// list is ever buffered.
struct Parser<'a> {
    out: WebVtt,
    block: Block<'a>,
}

/// The block being read.
enum Block<'a> {
    /// Between blocks.
    Empty,
    /// One line read, with no `-->`: the next line tells whether it is a cue
    /// id or a NOTE, STYLE or REGION line.
    Undecided { number: usize, first: &'a str },
    /// A cue, and how many lines of text it has so far.
    Cue { cue: Cue, lines: usize },
    /// A comment, dropped.
    Note,
    /// A STYLE block, or a REGION block if `region`.
    Style { region: bool, body: String },
}

impl<'a> Parser<'a> {
    /// Takes a non-blank line.
    fn line(&mut self, number: usize, line: &'a str) -> Result<(), VttError> {
        self.block = match mem::replace(&mut self.block, Block::Empty) {
            Block::Empty if line.contains(ARROW) => self.start_cue(None, number, line)?,
            Block::Empty => Block::Undecided {
                number,
                first: line,
            },
            // As in browsers, `-->` on a block's second line makes the first
            // the cue id, even when that reads `NOTE` or `STYLE`.
            Block::Undecided { first, .. } if line.contains(ARROW) => {
                self.start_cue(Some(first), number, line)?
            }
            Block::Undecided {
                number: first_number,
                first,
            } => {
                let mut block = self.classify(first_number, first)?;
                block.push_line(number, line)?;
                block
            }
            mut block => {
                block.push_line(number, line)?;
                block
            }
        };
        Ok(())
    }

    /// Takes a blank line or the end of the file.
    fn end_block(&mut self) -> Result<(), VttError> {
        let mut block = mem::replace(&mut self.block, Block::Empty);
        if let Block::Undecided { number, first } = block {
            block = self.classify(number, first)?;
        }
        match block {
            Block::Cue { cue, .. } => self.out.cues.push(cue),
            Block::Style {
                region: false,
                body,
            } => self.out.styles.push(body),
            Block::Style { region: true, body } => self.out.regions.push(body),
            Block::Empty | Block::Undecided { .. } | Block::Note => {}
        }
        Ok(())
    }

    /// Starts a cue at its timing line.
    fn start_cue(
        &self,
        id: Option<&str>,
        number: usize,
        timing: &str,
    ) -> Result<Block<'a>, VttError> {
        if self.out.cues.len() >= MAX_CUES {
            return Err(VttError::new(number, "more than 100000 cues"));
        }
        let (start_ms, end_ms, settings) =
            parse_timing(timing).map_err(|reason| VttError::new(number, reason))?;
        let cue = Cue {
            id: id.map(str::to_owned),
            start_ms,
            end_ms,
            settings,
            text: String::new(),
        };
        Ok(Block::Cue { cue, lines: 0 })
    }

    /// What a block is whose first line is `first` and whose second line, if
    /// any, has no `-->`.
    fn classify(&self, number: usize, first: &str) -> Result<Block<'a>, VttError> {
        let note = first
            .strip_prefix("NOTE")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
        if note {
            return Ok(Block::Note);
        }
        let region = if is_keyword(first, "STYLE") {
            false
        } else if is_keyword(first, "REGION") {
            true
        } else {
            return Err(VttError::new(
                number,
                "block has no timing line (start --> end) and is not NOTE, STYLE or REGION",
            ));
        };
        // Browsers ignore them after a cue; refusing tells the uploader
        // their styling would be lost.
        if !self.out.cues.is_empty() {
            return Err(VttError::new(
                number,
                "STYLE and REGION blocks must come before the first cue",
            ));
        }
        Ok(Block::Style {
            region,
            body: String::new(),
        })
    }
}

impl Block<'_> {
    /// Adds a non-blank line after the block's first line or timing line.
    fn push_line(&mut self, number: usize, line: &str) -> Result<(), VttError> {
        match self {
            Block::Cue { cue, lines } => {
                if *lines >= MAX_CUE_LINES {
                    return Err(VttError::new(number, "cue has more than 100 lines of text"));
                }
                *lines += 1;
                append(
                    &mut cue.text,
                    number,
                    line,
                    "\"-->\" in cue text; is a blank line missing before this cue?",
                )
            }
            Block::Style { body, .. } => append(
                body,
                number,
                line,
                "STYLE and REGION blocks must not contain \"-->\"",
            ),
            Block::Note if line.contains(ARROW) => Err(VttError::new(
                number,
                "NOTE blocks must not contain \"-->\"; is a blank line missing?",
            )),
            Block::Note | Block::Empty | Block::Undecided { .. } => Ok(()),
        }
    }
}

/// Appends `line` to a block's text, refusing `-->` (with `arrow_reason`)
/// and text longer than [`MAX_CUE_TEXT_BYTES`].
fn append(
    buf: &mut String,
    number: usize,
    line: &str,
    arrow_reason: &'static str,
) -> Result<(), VttError> {
    if line.contains(ARROW) {
        return Err(VttError::new(number, arrow_reason));
    }
    let separator = usize::from(!buf.is_empty());
    if buf.len() + separator + line.len() > MAX_CUE_TEXT_BYTES {
        return Err(VttError::new(
            number,
            "cue or block text is longer than 64 KiB",
        ));
    }
    if separator == 1 {
        buf.push('\n');
    }
    buf.push_str(line);
    Ok(())
}

/// Parses `start --> end [settings]`: the two times and the settings
/// joined by single spaces.
fn parse_timing(line: &str) -> Result<(u64, u64, String), &'static str> {
    let mut c = Cursor {
        bytes: line.as_bytes(),
        pos: 0,
    };
    c.skip_ws();
    let start = c.timestamp()?;
    c.skip_ws();
    if !c.eat(ARROW.as_bytes()) {
        return Err("expected \"-->\" between the start and end times");
    }
    c.skip_ws();
    let end = c.timestamp()?;
    // The cursor only ever steps over ASCII, so this is a char boundary.
    let rest = line.get(c.pos..).unwrap_or("");
    if !rest.is_empty() && !rest.starts_with(is_ws) {
        return Err("expected whitespace after the end time");
    }
    if rest.contains(ARROW) {
        return Err("cue settings must not contain \"-->\"");
    }
    if end <= start {
        return Err("cue must end after it starts");
    }
    let settings = rest
        .split(is_ws)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Ok((start, end, settings))
}

/// A read position in one line's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.bytes.get(self.pos), Some(b' ' | b'\t' | b'\x0c')) {
            self.pos += 1;
        }
    }

    /// Steps over `token` if it comes next.
    fn eat(&mut self, token: &[u8]) -> bool {
        let found = self
            .bytes
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(token));
        if found {
            self.pos += token.len();
        }
        found
    }

    /// Reads a run of ASCII digits: how many, and their value unless it
    /// overflows.
    fn digits(&mut self) -> (usize, Option<u64>) {
        let start = self.pos;
        let mut value = Some(0u64);
        while let Some(&b) = self.bytes.get(self.pos) {
            if !b.is_ascii_digit() {
                break;
            }
            value = value
                .and_then(|v| v.checked_mul(10))
                .and_then(|v| v.checked_add(u64::from(b - b'0')));
            self.pos += 1;
        }
        (self.pos - start, value)
    }

    /// Reads `mm:ss.ttt` or `h…h:mm:ss.ttt` as milliseconds, below
    /// [`MAX_TIMESTAMP_MS`].
    fn timestamp(&mut self) -> Result<u64, &'static str> {
        const TWO_DIGITS: &str = "minutes and seconds must have two digits";
        let (first_len, first) = self.digits();
        if first_len == 0 || !self.eat(b":") {
            return Err("expected a timestamp (mm:ss.ttt or hh:mm:ss.ttt)");
        }
        let (second_len, second) = self.digits();
        if second_len != 2 {
            return Err(TWO_DIGITS);
        }
        let (hours, minutes, seconds) = if self.eat(b":") {
            let (third_len, third) = self.digits();
            if third_len != 2 {
                return Err(TWO_DIGITS);
            }
            (first, second, third)
        } else if first_len == 2 {
            (Some(0), first, second)
        } else {
            return Err("minutes must have two digits; hours come first, as in 01:00:00.000");
        };
        // Only the hours, of any length, can overflow.
        let (Some(hours), Some(minutes), Some(seconds)) = (hours, minutes, seconds) else {
            return Err("timestamp is too large");
        };
        if minutes > 59 {
            return Err("minutes must be below 60");
        }
        if seconds > 59 {
            return Err("seconds must be below 60");
        }
        if !self.eat(b".") {
            return Err("expected '.' and three digits of milliseconds");
        }
        let (millis_len, millis) = self.digits();
        let Some(millis) = millis.filter(|_| millis_len == 3) else {
            return Err("milliseconds must have exactly three digits");
        };
        hours
            .checked_mul(3_600_000)
            .and_then(|h| h.checked_add(minutes * 60_000 + seconds * 1000 + millis))
            .filter(|&total| total < MAX_TIMESTAMP_MS)
            .ok_or("timestamp is too large")
    }
}

/// Whitespace within a line.
fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

/// Whether a line is empty or only whitespace: it ends a block.
fn is_blank(line: &str) -> bool {
    line.chars().all(is_ws)
}

/// Whether `line` is `word` alone, perhaps with trailing whitespace.
fn is_keyword(line: &str, word: &str) -> bool {
    line.strip_prefix(word).is_some_and(is_blank)
}

/// The line, from 1, that byte `offset` of `bytes` is on.
fn line_at(bytes: &[u8], offset: usize) -> usize {
    let before = bytes.get(..offset).unwrap_or(bytes);
    let mut line = 1;
    let mut after_cr = false;
    for &b in before {
        // CRLF is one line break.
        if b == b'\r' || (b == b'\n' && !after_cr) {
            line += 1;
        }
        after_cr = b == b'\r';
    }
    line
}

/// Roughly how long the cues will be once written, to size the output once.
fn estimate(cues: &[Cue]) -> usize {
    cues.iter()
        .map(|c| 64 + c.id.as_ref().map_or(0, String::len) + c.settings.len() + c.text.len())
        .fold(16usize, usize::saturating_add)
}

/// Writes a cue and the blank line after it. Only what [`parse`] would read
/// back the same is written; see [`serialize`].
fn push_cue(out: &mut String, cue: &Cue) {
    let id = cue
        .id
        .as_deref()
        .filter(|id| !is_blank(id) && !id.contains(['\r', '\n', '\0']) && !id.contains(ARROW));
    if let Some(id) = id {
        out.push_str(id);
        out.push('\n');
    }
    out.push_str(&timestamp(cue.start_ms));
    out.push_str(" --> ");
    out.push_str(&timestamp(cue.end_ms));
    let settings = cue
        .settings
        .split(|c: char| is_ws(c) || c == '\r' || c == '\n')
        .filter(|s| !s.is_empty() && !s.contains(ARROW) && !s.contains('\0'));
    for setting in settings {
        out.push(' ');
        out.push_str(setting);
    }
    out.push('\n');
    push_lines(out, &cue.text);
    out.push('\n');
}

/// Writes a STYLE or REGION block and the blank line after it.
fn push_block(out: &mut String, keyword: &str, body: &str) {
    out.push_str(keyword);
    out.push('\n');
    push_lines(out, body);
    out.push('\n');
}

/// Writes the non-blank lines of `text`, each with an LF, so that none ends
/// the block or starts a cue early.
fn push_lines(out: &mut String, text: &str) {
    for line in text.split(['\r', '\n']).filter(|l| !is_blank(l)) {
        if line.contains(ARROW) || line.contains('\0') {
            out.push_str(&line.replace(ARROW, "--&gt;").replace('\0', "\u{FFFD}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as uploaders send them: BOM, CRLF, header metadata, STYLE and
    /// NOTE blocks, ids, settings with untidy spacing, multi-line text, cues
    /// out of order, trailing spaces on a separator line.
    const REALISTIC: &str = "\u{FEFF}WEBVTT - English subtitles\r\n\
        Kind: captions\r\n\
        Language: en\r\n\
        \r\n\
        STYLE\r\n\
        ::cue {\r\n\
        \x20 color: yellow;\r\n\
        }\r\n\
        \r\n\
        NOTE This file was\r\n\
        made by hand\r\n\
        \r\n\
        1\r\n\
        00:00:01.000 --> 00:00:04.000  align:start\tline:90% \r\n\
        Hello,\r\n\
        <i>world</i>!\r\n\
        \x20 \r\n\
        intro-2\r\n\
        00:03.500-->00:06.000\r\n\
        Second &amp; last\r\n\
        \r\n\
        00:00:00.500 --> 00:00:01.200\r\n\
        - Earlier, no id\r\n";

    fn cue(id: Option<&str>, start_ms: u64, end_ms: u64, settings: &str, text: &str) -> Cue {
        Cue {
            id: id.map(str::to_owned),
            start_ms,
            end_ms,
            settings: settings.into(),
            text: text.into(),
        }
    }

    fn err(src: &str) -> VttError {
        parse(src.as_bytes()).expect_err(src)
    }

    #[test]
    fn parses_a_realistic_file() {
        assert!(REALISTIC.as_bytes().starts_with(b"\xEF\xBB\xBF"));
        let v = parse(REALISTIC.as_bytes()).unwrap();
        assert_eq!(v.styles, ["::cue {\n  color: yellow;\n}"]);
        assert!(v.regions.is_empty());
        assert_eq!(
            v.cues,
            [
                cue(None, 500, 1200, "", "- Earlier, no id"),
                cue(
                    Some("1"),
                    1000,
                    4000,
                    "align:start line:90%",
                    "Hello,\n<i>world</i>!"
                ),
                cue(Some("intro-2"), 3500, 6000, "", "Second &amp; last"),
            ]
        );
    }

    #[test]
    fn serializes_normalised() {
        let v = parse(REALISTIC.as_bytes()).unwrap();
        assert_eq!(
            serialize(&v),
            "WEBVTT\n\n\
             STYLE\n::cue {\n  color: yellow;\n}\n\n\
             00:00:00.500 --> 00:00:01.200\n- Earlier, no id\n\n\
             1\n00:00:01.000 --> 00:00:04.000 align:start line:90%\nHello,\n<i>world</i>!\n\n\
             intro-2\n00:00:03.500 --> 00:00:06.000\nSecond &amp; last\n\n"
        );
    }

    #[test]
    fn round_trips() {
        let files = [
            REALISTIC,
            "WEBVTT",
            "WEBVTT\n\nREGION\nid:fred width:40%\n\nSTYLE\n\n00:01.000 --> 00:02.000\n",
            // A second line with `-->` makes the first a cue id, whatever it says.
            "WEBVTT\n\nNOTE\n00:01.000 --> 00:02.000\nnot a comment\n",
            "WEBVTT\n\n  spaced id \n1:00:00.000 --> 305419:00:00.000 x  y\n a \n b\n",
            // Same start: file order kept.
            "WEBVTT\n\n00:05.000 --> 00:06.000\nB\n\n00:05.000 --> 00:07.000\nC\n\n00:01.000 --> 00:09.000\nA\n",
        ];
        for src in files {
            let v = parse(src.as_bytes()).unwrap();
            let text = serialize(&v);
            assert_eq!(parse(text.as_bytes()).unwrap(), v, "{src}");
            assert_eq!(serialize(&parse(text.as_bytes()).unwrap()), text);
        }
        let v = parse(files[5].as_bytes()).unwrap();
        let texts: Vec<&str> = v.cues.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["A", "B", "C"]);
    }

    #[test]
    fn line_endings_and_lenient_header() {
        // CR only, no blank line after the header, mixed endings after.
        let v = parse(
            b"WEBVTT\r00:01.000 --> 00:02.000\rone\r\r00:02.000 --> 00:03.000\r\ntwo\nlines\n",
        )
        .unwrap();
        assert_eq!(
            v.cues,
            [
                cue(None, 1000, 2000, "", "one"),
                cue(None, 2000, 3000, "", "two\nlines"),
            ]
        );
        assert_eq!(parse(b"WEBVTT\tanything").unwrap(), WebVtt::default());
        assert_eq!(parse(b"WEBVTT\n\n\n\n").unwrap(), WebVtt::default());
    }

    #[test]
    fn refuses_a_missing_header() {
        for src in [
            "",
            "00:01.000 --> 00:02.000\nhi\n",
            "WEBVTTX\n",
            "\nWEBVTT\n",
            "webvtt\n",
        ] {
            assert_eq!(
                err(src),
                VttError::new(1, "the first line must be WEBVTT"),
                "{src:?}"
            );
        }
    }

    #[test]
    fn refuses_bad_timestamps() {
        let cases = [
            ("00:61.000", "seconds must be below 60"),
            ("61:00.000", "minutes must be below 60"),
            ("00:60:00.000", "minutes must be below 60"),
            (
                "1:00.00",
                "minutes must have two digits; hours come first, as in 01:00:00.000",
            ),
            ("00:1.000", "minutes and seconds must have two digits"),
            ("00:01:1.000", "minutes and seconds must have two digits"),
            ("00:01.00", "milliseconds must have exactly three digits"),
            ("00:01.0000", "milliseconds must have exactly three digits"),
            ("00:01,000", "expected '.' and three digits of milliseconds"),
            (
                "00:00:00:01.000",
                "expected '.' and three digits of milliseconds",
            ),
            (
                "-1:00.000",
                "expected a timestamp (mm:ss.ttt or hh:mm:ss.ttt)",
            ),
            ("305420:00:00.000", "timestamp is too large"),
            (
                "99999999999999999999999:00:00.000",
                "timestamp is too large",
            ),
        ];
        for (ts, reason) in cases {
            let src = format!("WEBVTT\n\n{ts} --> 999:00:00.000\nhi\n");
            assert_eq!(err(&src), VttError::new(3, reason), "{ts}");
        }
        assert_eq!(
            err("WEBVTT\n\n00:01.000 x --> 00:02.000\nhi\n").reason,
            "expected \"-->\" between the start and end times"
        );
        assert_eq!(
            err("WEBVTT\n\n00:01.000 --> 00:02.000align:start\n").reason,
            "expected whitespace after the end time"
        );
        assert_eq!(
            err("WEBVTT\n\n00:01.000 --> 00:02.000 --> 00:03.000\n").reason,
            "cue settings must not contain \"-->\""
        );
        // One-digit and many-digit hours are fine.
        let v = parse(b"WEBVTT\n\n0:00:01.000 --> 305419:00:00.000\n").unwrap();
        assert_eq!(v.cues[0].end_ms, 305_419 * 3_600_000);
    }

    #[test]
    fn refuses_a_cue_that_does_not_end_after_it_starts() {
        let e = err("WEBVTT\n\nid\n00:02.000 --> 00:01.000\nhi\n");
        assert_eq!(e, VttError::new(4, "cue must end after it starts"));
        assert_eq!(e.to_string(), "line 4: cue must end after it starts");
        assert_eq!(err("WEBVTT\n\n00:01.000 --> 00:01.000\n").line, 3);
    }

    #[test]
    fn refuses_arrows_in_text() {
        // The classic missing blank line between two cues.
        let e = err("WEBVTT\n\n00:01.000 --> 00:02.000\nhello\n00:02.000 --> 00:03.000\nworld\n");
        assert_eq!(e.line, 5);
        assert!(e.reason.contains("-->"), "{e}");
        assert_eq!(err("WEBVTT\n\nNOTE a\nb\nc --> d\n").line, 5);
        assert_eq!(err("WEBVTT\n\nSTYLE\na\nb --> c\n").line, 5);
    }

    #[test]
    fn refuses_oversize_input() {
        let mut big = b"WEBVTT\n\n".to_vec();
        big.resize(MAX_VTT_BYTES, b'\n');
        assert_eq!(parse(&big).unwrap(), WebVtt::default());
        big.push(b'\n');
        let e = parse(&big).unwrap_err();
        assert_eq!(e, VttError::new(0, "file is larger than 4 MiB"));
        assert_eq!(e.to_string(), "file is larger than 4 MiB");

        // Under the limit as uploaded, over it once normalised (each cue
        // grows by 8 bytes): refused, or the edge could not read it back.
        let mut src = String::from("WEBVTT\n\n");
        for _ in 0..MAX_CUES {
            src.push_str("00:00.000-->00:00.001\n123456789012\n\n");
        }
        assert!(src.len() <= MAX_VTT_BYTES);
        assert_eq!(
            err(&src),
            VttError::new(0, "file is larger than 4 MiB once normalised")
        );
    }

    #[test]
    fn caps_cues_and_cue_size() {
        let mut src = String::from("WEBVTT\n\n");
        for _ in 0..MAX_CUES {
            src.push_str("00:00.000 --> 00:00.001\n\n");
        }
        assert_eq!(parse(src.as_bytes()).unwrap().cues.len(), MAX_CUES);
        src.push_str("00:00.000 --> 00:00.001\n");
        assert_eq!(
            err(&src),
            VttError::new(2 * MAX_CUES + 3, "more than 100000 cues")
        );

        let long = "a".repeat(MAX_CUE_TEXT_BYTES);
        let src = format!("WEBVTT\n\n00:00.000 --> 00:00.001\n{long}\n");
        assert_eq!(
            parse(src.as_bytes()).unwrap().cues[0].text.len(),
            MAX_CUE_TEXT_BYTES
        );
        let src = format!("WEBVTT\n\n00:00.000 --> 00:00.001\n{long}a\n");
        assert_eq!(err(&src).line, 4);
        let src = format!("WEBVTT\n\n00:00.000 --> 00:00.001\n{long}\nb\n");
        assert_eq!(err(&src).line, 5);

        let lines = "x\n".repeat(MAX_CUE_LINES);
        let src = format!("WEBVTT\n\n00:00.000 --> 00:00.001\n{lines}");
        assert_eq!(
            parse(src.as_bytes()).unwrap().cues[0].text.len(),
            2 * MAX_CUE_LINES - 1
        );
        let src = format!("{src}x\n");
        assert_eq!(err(&src).line, 4 + MAX_CUE_LINES);
    }

    #[test]
    fn refuses_other_malformed_input() {
        assert_eq!(
            parse(b"WEBVTT\r\n\r\n\xff").unwrap_err(),
            VttError::new(3, "not UTF-8")
        );
        assert_eq!(
            parse(b"WEBVTT\n\nid\0\n").unwrap_err(),
            VttError::new(3, "NUL character")
        );
        // A mistyped timing line: the cue would otherwise vanish.
        assert_eq!(err("WEBVTT\n\nid\n00:01.000 - 00:02.000\nhi\n").line, 3);
        assert_eq!(err("WEBVTT\n\nhello").line, 3);
        assert_eq!(
            err("WEBVTT\n\n00:01.000 --> 00:02.000\n\nSTYLE\n::cue {}\n"),
            VttError::new(5, "STYLE and REGION blocks must come before the first cue")
        );
        assert_eq!(err("WEBVTT\n\n00:01.000 --> 00:02.000\n\nREGION\n").line, 5);
        // NOTE after cues is fine, and so is a NOTE of one word.
        assert!(parse(b"WEBVTT\n\n00:01.000 --> 00:02.000\n\nNOTE\n\nNOTE\tx\ny\n").is_ok());
        // `NOTES` is not a NOTE.
        assert_eq!(err("WEBVTT\n\nNOTES x\n").line, 3);
        let e: crate::Error = err("WEBVTT\n\nx\n").into();
        assert!(matches!(e, crate::Error::Malformed(_)));
    }

    #[test]
    fn segments_hold_the_overlapping_cues() {
        let v = parse(
            b"WEBVTT\n\nSTYLE\n::cue {}\n\n\
              a\n00:00.000 --> 00:02.000\nA\n\n\
              00:01.500 --> 00:05.000 line:0\nB\n\n\
              00:06.000 --> 00:07.000\nC\n",
        )
        .unwrap();
        let header = "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:900000,LOCAL:00:00:00.000\n\n";
        let a = "a\n00:00:00.000 --> 00:00:02.000\nA\n\n";
        let b = "00:00:01.500 --> 00:00:05.000 line:0\nB\n\n";
        let c = "00:00:06.000 --> 00:00:07.000\nC\n\n";
        let seg = |start, end| segment(&v, start, end, 900_000);
        assert_eq!(seg(0, 2000), format!("{header}{a}{b}"));
        // A cue that ends where the window starts is not in it...
        assert_eq!(seg(2000, 4000), format!("{header}{b}"));
        // ...nor one that starts where it ends.
        assert_eq!(seg(4000, 6000), format!("{header}{b}"));
        assert_eq!(seg(5000, 6000), header);
        assert_eq!(seg(0, u64::MAX), format!("{header}{a}{b}{c}"));
        assert_eq!(seg(1600, 1600), header);
        assert_eq!(seg(7000, 5000), header);
        assert!(segment(&WebVtt::default(), 0, 10, 0)
            .starts_with("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n\n"));
        // A segment is a WebVTT file in its own right.
        assert_eq!(parse(seg(0, 2000).as_bytes()).unwrap().cues, v.cues[..2]);
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(timestamp(0), "00:00:00.000");
        assert_eq!(timestamp(3_723_004), "01:02:03.004");
        assert_eq!(timestamp(360_000_000_000), "100000:00:00.000");
        assert_eq!(timestamp(u64::MAX), "5124095576030:25:51.615");
    }

    #[test]
    fn hand_built_values_serialize_well_formed() {
        let v = WebVtt {
            styles: vec!["a\n\n--> b\r\n".into()],
            regions: vec![],
            cues: vec![cue(
                Some("a\nb"),
                0,
                1000,
                "align:start\nline:0 x-->y",
                "one\n\ntwo --> three\r\n",
            )],
        };
        let back = parse(serialize(&v).as_bytes()).unwrap();
        assert_eq!(back.styles, ["a\n--&gt; b"]);
        assert_eq!(
            back.cues,
            [cue(
                None,
                0,
                1000,
                "align:start line:0",
                "one\ntwo --&gt; three"
            )]
        );
    }
}
