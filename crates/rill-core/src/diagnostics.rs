//! Validation errors with file positions, and the collector that gathers them.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::yaml::Pos;

/// Every problem found in a dataflow file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Severity {
    /// The file cannot be used.
    #[default]
    Error,
    /// The file is valid, but something will likely go wrong when it runs.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub(crate) fn at(file: &Path, pos: Pos, message: String, hint: Option<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            message,
            hint,
        }
    }

    /// A warning at `line`:`column` (0 when unknown).
    pub fn warning(file: &Path, (line, column): (usize, usize), message: String, hint: Option<String>) -> Self {
        Diagnostic { severity: Severity::Warning, file: file.to_path_buf(), line, column, message, hint }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A position of 0 means "unknown" (e.g. the file could not be read): don't print 0:0.
        if self.line == 0 {
            write!(f, "{}: {}: {}", self.file.display(), self.severity, self.message)?;
        } else {
            let file = self.file.display();
            write!(f, "{file}:{}:{}: {}: {}", self.line, self.column, self.severity, self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n    hint: {hint}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in &self.0 {
            writeln!(f, "{diagnostic}")?;
        }
        match self.0.len() {
            1 => write!(f, "1 error found"),
            n => write!(f, "{n} errors found"),
        }
    }
}

impl std::error::Error for Diagnostics {}

/// A problem found by a helper that does not know where its input sits in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(message: impl Into<String>, hint: impl Into<Option<String>>) -> Self {
        Problem { message: message.into(), hint: hint.into() }
    }
}

/// Gathers diagnostics for one file so that all of them can be reported at once.
pub(crate) struct Collector {
    file: PathBuf,
    found: Vec<Diagnostic>,
    /// Valid, but worth saying (a field rill accepts and ignores).
    warnings: Vec<Diagnostic>,
}

impl Collector {
    pub fn new(file: &Path) -> Self {
        Collector { file: file.to_path_buf(), found: Vec::new(), warnings: Vec::new() }
    }

    pub fn warn_hint(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        let file = self.file.clone();
        self.warn_hint_in(&file, pos, message, hint);
    }

    /// The file being read.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// A warning about `file` (a module file this one uses).
    pub fn warn_hint_in(&mut self, file: &Path, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        let position = (pos.line, pos.column);
        self.warnings.push(Diagnostic::warning(file, position, message.into(), Some(hint.into())));
    }

    /// An error in `file` (a module file this one uses).
    pub fn error_hint_in(&mut self, file: &Path, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.found.push(Diagnostic::at(file, pos, message.into(), Some(hint.into())));
    }

    /// Takes in what `other` (a module file's collector) found.
    pub fn absorb(&mut self, other: Collector) {
        self.found.extend(other.found);
        self.warnings.extend(other.warnings);
    }

    /// This file's problems first, then other files', each in file order.
    fn sort(&self, diagnostics: &mut [Diagnostic]) {
        diagnostics.sort_by(|a, b| {
            let key = |d: &Diagnostic| (d.file != self.file, d.file.clone(), d.line, d.column);
            key(a).cmp(&key(b))
        });
    }

    /// The warnings so far, in file order.
    pub fn take_warnings(&mut self) -> Vec<Diagnostic> {
        let mut warnings = std::mem::take(&mut self.warnings);
        self.sort(&mut warnings);
        warnings
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(pos, message.into(), None);
    }

    pub fn error_hint(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.push(pos, message.into(), Some(hint.into()));
    }

    pub fn problem(&mut self, pos: Pos, problem: Problem) {
        self.push(pos, problem.message, problem.hint);
    }

    fn push(&mut self, pos: Pos, message: String, hint: Option<String>) {
        self.found.push(Diagnostic::at(&self.file, pos, message, hint));
    }

    /// `Ok(value)` if nothing was reported, otherwise every diagnostic in file order.
    pub fn finish<T>(mut self, value: T) -> Result<T, Diagnostics> {
        if self.found.is_empty() {
            return Ok(value);
        }
        // Stable sort: problems at the same position keep the order they were found in.
        let mut found = std::mem::take(&mut self.found);
        self.sort(&mut found);
        Err(Diagnostics(found))
    }
}
