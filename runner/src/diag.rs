//! Errors about user input that say what and where: `file:line:col: message`, with help.
use std::fmt;

/// A 1-based line and column in a pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub file: String,
    pub pos: Option<Pos>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn at(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic { file: file.to_string(), pos: Some(pos), message: message.into(), help: None }
    }

    pub fn file(file: &str, message: impl Into<String>) -> Self {
        Diagnostic { file: file.to_string(), pos: None, message: message.into(), help: None }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The same diagnostic with its message rewritten (to say whose option it is).
    pub fn with_message(mut self, rewrite: impl FnOnce(&str) -> String) -> Self {
        self.message = rewrite(&self.message);
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}: error: {}", self.file, p.line, p.col, self.message)?,
            None => write!(f, "{}: error: {}", self.file, self.message)?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// All the problems found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn sorted(mut list: Vec<Diagnostic>) -> Self {
        list.sort_by(|a, b| a.pos.cmp(&b.pos).then_with(|| a.message.cmp(&b.message)));
        list.dedup();
        Diagnostics(list)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

pub use petnas_sdk::options::nearest;

/// What the checks of one file find: each function that checks a part of a pipeline (or a
/// baseline) reports into it, and the caller gets every problem at once, in file order.
#[derive(Debug)]
pub struct Findings {
    file: String,
    found: Vec<Diagnostic>,
}

impl Findings {
    pub fn new(file: &str) -> Self {
        Findings { file: file.to_string(), found: Vec::new() }
    }

    /// The file the findings are about.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// A problem at `pos`.
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.found.push(Diagnostic::at(&self.file, pos, message));
    }

    /// A problem at `pos`, with what to do about it.
    pub fn error_with_help(&mut self, pos: Pos, message: impl Into<String>, help: impl Into<String>) {
        self.found.push(Diagnostic::at(&self.file, pos, message).help(help));
    }

    /// A problem made elsewhere (by a shared check that builds its own).
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.found.push(diagnostic);
    }

    /// "unknown KEY" at `pos`, with the nearest known key as help, or the list of known keys.
    pub fn unknown_key(&mut self, pos: Pos, key: &str, what: &str, known: &[&str]) {
        let help = match nearest(key, known.iter().copied()) {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!("expected one of: {}", known.join(", ")),
        };
        self.error_with_help(pos, format!("unknown {what} `{key}`"), help);
    }

    /// How many problems are in so far (a check that found none since can go on).
    pub fn count(&self) -> usize {
        self.found.len()
    }

    /// Every problem found, in file order.
    pub fn into_diagnostics(self) -> Diagnostics {
        Diagnostics::sorted(self.found)
    }

    /// `ok`, or every problem found, in file order.
    pub fn into_result<T>(self, ok: T) -> Result<T, Diagnostics> {
        if self.found.is_empty() {
            Ok(ok)
        } else {
            Err(self.into_diagnostics())
        }
    }
}
