//! The default entry of a `grub.cfg`, found the way GRUB finds it: by running the script.
//!
//! GRUB's configuration is a small shell language, and distributions' generated files use
//! it: variables (`set`, `$var`, `${var}`, quoting), `if`/`elif`/`else` on `[ … ]` tests,
//! `function`s, `load_env` from `grubenv`, `search --set=root`, `source` and `configfile`,
//! and the menu itself: `menuentry` and `submenu` blocks with `--id`. This module parses
//! that language and runs it with an environment like GRUB's on a PC, collecting the menu;
//! then it resolves `default` (an index, `N>M` into a submenu, a title, an id, or `saved`),
//! and runs the chosen entry's body to learn its `root`, `linux` (or `linuxefi`) and
//! `initrd` lines, with every variable expanded.
//!
//! What GRUB does with the screen, fonts, terminals, video and modules is ignored; an entry
//! that chainloads or boots another kind of kernel is reported as such. Loops (`for`,
//! `while`) are parsed and skipped: distributions' menus do not depend on them.

use std::collections::HashMap;

/// Most nested `source`/`configfile` levels, blocks and function calls.
const MAX_DEPTH: usize = 16;
/// Most commands one evaluation runs (a bound against a script that recurses).
const MAX_STEPS: usize = 100_000;
/// Most menu entries collected.
const MAX_ENTRIES: usize = 1000;

/// A word of the script: pieces that are literal or variable references, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text as is.
    Lit(String),
    /// `$name` or `${name}`.
    Var(String),
}

type Word = Vec<Piece>;

/// A statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stmt {
    /// A command and its arguments.
    Cmd(Vec<Word>),
    /// `if c; then …; elif c; then …; else …; fi`.
    If {
        branches: Vec<(Vec<Stmt>, Vec<Stmt>)>,
        otherwise: Vec<Stmt>,
    },
    /// `menuentry ARGS { BODY }` (`submenu` when `submenu`).
    Menu {
        submenu: bool,
        args: Vec<Word>,
        body: Vec<Stmt>,
    },
    /// `function NAME { BODY }`.
    Function { name: String, body: Vec<Stmt> },
    /// A loop: parsed, never run.
    Loop,
}

/// Why a configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrubError {
    /// The script does not parse.
    #[error("{file}: line {line}: {what}")]
    Syntax {
        /// The file.
        file: String,
        /// Its line.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// There is no menu entry.
    #[error("no menu entry")]
    NoEntries,
    /// The chosen entry boots no Linux kernel.
    #[error("the default entry {0:?} boots no Linux kernel (chainloader or another loader)")]
    NotLinux(String),
    /// Too deep, too long.
    #[error("the configuration nests or runs too deep")]
    TooDeep,
    /// A file it names cannot be read.
    #[error("{0}")]
    File(String),
}

// --- lexing and parsing -----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Word, usize),
    /// A newline or `;`.
    End(usize),
    Open(usize),
    Close(usize),
}

fn lex(text: &str, file: &str) -> Result<Vec<Token>, GrubError> {
    let syntax = |line: usize, what: &str| GrubError::Syntax {
        file: file.to_string(),
        line,
        what: what.to_string(),
    };
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                tokens.push(Token::End(line));
                line += 1;
                i += 1;
            }
            ';' => {
                tokens.push(Token::End(line));
                i += 1;
            }
            ' ' | '\t' | '\r' => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\\' if chars.get(i + 1) == Some(&'\n') => {
                i += 2;
                line += 1;
            }
            _ => {
                let start_line = line;
                let mut word: Word = Vec::new();
                let mut lit = String::new();
                let flush = |lit: &mut String, word: &mut Word| {
                    if !lit.is_empty() {
                        word.push(Piece::Lit(std::mem::take(lit)));
                    }
                };
                while i < chars.len() {
                    let c = chars[i];
                    match c {
                        ' ' | '\t' | '\r' | '\n' | ';' => break,
                        '\'' => {
                            i += 1;
                            while i < chars.len() && chars[i] != '\'' {
                                if chars[i] == '\n' {
                                    line += 1;
                                }
                                lit.push(chars[i]);
                                i += 1;
                            }
                            if i >= chars.len() {
                                return Err(syntax(start_line, "unterminated '"));
                            }
                            i += 1;
                        }
                        '"' => {
                            i += 1;
                            loop {
                                let Some(&c) = chars.get(i) else {
                                    return Err(syntax(start_line, "unterminated \""));
                                };
                                match c {
                                    '"' => {
                                        i += 1;
                                        break;
                                    }
                                    '\\' if matches!(
                                        chars.get(i + 1),
                                        Some('"' | '\\' | '$' | '\n')
                                    ) =>
                                    {
                                        if chars[i + 1] != '\n' {
                                            lit.push(chars[i + 1]);
                                        } else {
                                            line += 1;
                                        }
                                        i += 2;
                                    }
                                    '$' => {
                                        let (name, next) = variable(&chars, i);
                                        match name {
                                            Some(n) => {
                                                flush(&mut lit, &mut word);
                                                word.push(Piece::Var(n));
                                            }
                                            None => lit.push('$'),
                                        }
                                        i = next;
                                    }
                                    _ => {
                                        if c == '\n' {
                                            line += 1;
                                        }
                                        lit.push(c);
                                        i += 1;
                                    }
                                }
                            }
                        }
                        '\\' => {
                            if let Some(&n) = chars.get(i + 1) {
                                if n == '\n' {
                                    line += 1;
                                } else {
                                    lit.push(n);
                                }
                            }
                            i += 2;
                        }
                        '$' => {
                            let (name, next) = variable(&chars, i);
                            match name {
                                Some(n) => {
                                    flush(&mut lit, &mut word);
                                    word.push(Piece::Var(n));
                                }
                                None => lit.push('$'),
                            }
                            i = next;
                        }
                        _ => {
                            lit.push(c);
                            i += 1;
                        }
                    }
                }
                flush(&mut lit, &mut word);
                let bare = |s: &str| word == [Piece::Lit(s.to_string())];
                if bare("{") {
                    tokens.push(Token::Open(start_line));
                } else if bare("}") {
                    tokens.push(Token::Close(start_line));
                } else {
                    // An empty quoted word ('' or "") is still a word.
                    tokens.push(Token::Word(word, start_line));
                }
            }
        }
    }
    tokens.push(Token::End(line));
    Ok(tokens)
}

/// The variable name at `chars[at]` (a `$`), and where the text after it starts.
fn variable(chars: &[char], at: usize) -> (Option<String>, usize) {
    let mut i = at + 1;
    if chars.get(i) == Some(&'{') {
        let start = i + 1;
        while i < chars.len() && chars[i] != '}' {
            i += 1;
        }
        let name: String = chars[start..i.min(chars.len())].iter().collect();
        return (Some(name), (i + 1).min(chars.len()));
    }
    let start = i;
    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
        i += 1;
    }
    if i == start {
        // `$?`, `$#`, `$@`: a one-character special name.
        if let Some(&c) = chars.get(i)
            && matches!(c, '?' | '#' | '@' | '*')
        {
            return (Some(c.to_string()), i + 1);
        }
        return (None, i);
    }
    (Some(chars[start..i].iter().collect()), i)
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    file: &'a str,
}

fn literal(word: &Word) -> Option<&str> {
    match word.as_slice() {
        [Piece::Lit(s)] => Some(s),
        _ => None,
    }
}

impl Parser<'_> {
    fn error(&self, what: &str) -> GrubError {
        let line = match self.tokens.get(self.at) {
            Some(Token::Word(_, l) | Token::End(l) | Token::Open(l) | Token::Close(l)) => *l,
            None => 0,
        };
        GrubError::Syntax {
            file: self.file.to_string(),
            line,
            what: what.to_string(),
        }
    }

    fn skip_ends(&mut self) {
        while matches!(self.tokens.get(self.at), Some(Token::End(_))) {
            self.at += 1;
        }
    }

    /// The keyword at the start of the next statement, if it is one of `words`.
    fn at_keyword(&self, words: &[&str]) -> bool {
        match self.tokens.get(self.at) {
            Some(Token::Word(w, _)) => literal(w).is_some_and(|s| words.contains(&s)),
            _ => false,
        }
    }

    /// Statements until one of `stop` (a keyword) or `}` or the end.
    fn block(&mut self, stop: &[&str], depth: usize) -> Result<Vec<Stmt>, GrubError> {
        if depth > MAX_DEPTH {
            return Err(GrubError::TooDeep);
        }
        let mut out = Vec::new();
        loop {
            self.skip_ends();
            match self.tokens.get(self.at) {
                None | Some(Token::Close(_)) => return Ok(out),
                _ if self.at_keyword(stop) => return Ok(out),
                _ => out.push(self.statement(depth)?),
            }
        }
    }

    fn expect_keyword(&mut self, word: &str) -> Result<(), GrubError> {
        self.skip_ends();
        if self.at_keyword(&[word]) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {word}")))
        }
    }

    /// `{ statements }`.
    fn braces(&mut self, depth: usize) -> Result<Vec<Stmt>, GrubError> {
        self.skip_ends();
        if !matches!(self.tokens.get(self.at), Some(Token::Open(_))) {
            return Err(self.error("expected {"));
        }
        self.at += 1;
        let body = self.block(&[], depth + 1)?;
        if !matches!(self.tokens.get(self.at), Some(Token::Close(_))) {
            return Err(self.error("missing }"));
        }
        self.at += 1;
        Ok(body)
    }

    /// The words of a simple command, up to the end of the line (or a `{`).
    fn words(&mut self) -> Vec<Word> {
        let mut words = Vec::new();
        while let Some(Token::Word(w, _)) = self.tokens.get(self.at) {
            words.push(w.clone());
            self.at += 1;
        }
        words
    }

    fn statement(&mut self, depth: usize) -> Result<Stmt, GrubError> {
        let keyword = match self.tokens.get(self.at) {
            Some(Token::Word(w, _)) => literal(w).map(str::to_string),
            Some(Token::Open(_)) => {
                // A bare block: run it in place.
                let body = self.braces(depth)?;
                return Ok(Stmt::If {
                    branches: vec![(Vec::new(), body)],
                    otherwise: Vec::new(),
                });
            }
            _ => return Err(self.error("unexpected }")),
        };
        match keyword.as_deref() {
            Some("if") => {
                self.at += 1;
                let mut branches = Vec::new();
                let mut otherwise = Vec::new();
                loop {
                    let cond = self.block(&["then"], depth + 1)?;
                    self.expect_keyword("then")?;
                    let body = self.block(&["elif", "else", "fi"], depth + 1)?;
                    branches.push((cond, body));
                    self.skip_ends();
                    if self.at_keyword(&["elif"]) {
                        self.at += 1;
                        continue;
                    }
                    if self.at_keyword(&["else"]) {
                        self.at += 1;
                        otherwise = self.block(&["fi"], depth + 1)?;
                    }
                    self.expect_keyword("fi")?;
                    return Ok(Stmt::If {
                        branches,
                        otherwise,
                    });
                }
            }
            Some("menuentry" | "submenu") => {
                let submenu = keyword.as_deref() == Some("submenu");
                self.at += 1;
                let args = self.words();
                let body = self.braces(depth)?;
                Ok(Stmt::Menu {
                    submenu,
                    args,
                    body,
                })
            }
            Some("function") => {
                self.at += 1;
                let name = match self.tokens.get(self.at) {
                    Some(Token::Word(w, _)) => literal(w).unwrap_or_default().to_string(),
                    _ => return Err(self.error("function without a name")),
                };
                self.at += 1;
                let body = self.braces(depth)?;
                Ok(Stmt::Function { name, body })
            }
            Some("for" | "while" | "until") => {
                self.at += 1;
                self.block(&["do"], depth + 1)?;
                self.expect_keyword("do")?;
                self.block(&["done"], depth + 1)?;
                self.expect_keyword("done")?;
                Ok(Stmt::Loop)
            }
            _ => Ok(Stmt::Cmd(self.words())),
        }
    }
}

/// Parses a script.
fn parse(text: &str, file: &str) -> Result<Vec<Stmt>, GrubError> {
    let tokens = lex(text, file)?;
    let mut parser = Parser {
        tokens: &tokens,
        at: 0,
        file,
    };
    let body = parser.block(&[], 0)?;
    parser.skip_ends();
    if parser.at < tokens.len() {
        return Err(parser.error("unexpected }"));
    }
    Ok(body)
}

// --- running ----------------------------------------------------------------------------

/// What the script runs against: the disk's partitions and files.
pub trait Host {
    /// The partition GRUB would name `name` (`hd0,gpt2`, `hd0,msdos1`, `hd0`), as an index
    /// into the disk's partitions (`None` for the whole disk).
    fn partition(&self, name: &str) -> Option<Option<usize>>;
    /// GRUB's name of partition `index` (`hd0,gpt2`).
    fn name_of(&self, index: Option<usize>) -> String;
    /// The partition whose file system has this UUID (or label, when `label`).
    fn find_fs(&self, value: &str, label: bool) -> Option<Option<usize>>;
    /// The first partition holding `path`.
    fn find_file(&self, path: &str) -> Option<Option<usize>>;
    /// The contents of `path` on partition `index`.
    fn read(&self, index: Option<usize>, path: &str) -> Result<Vec<u8>, super::fs::ReadError>;
    /// BLS entries for `blscfg`, from partition `index`: (id, title, body statements as
    /// GRUB's blscfg turns them into: linux, initrd and the options).
    fn bls_entries(&self, index: Option<usize>) -> Vec<BlsMenuEntry>;
}

/// A BLS entry as GRUB's `blscfg` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlsMenuEntry {
    /// The entry's id (its file name without `.conf`).
    pub id: String,
    /// Its title.
    pub title: String,
    /// The kernel, relative to the partition.
    pub linux: String,
    /// The initrds.
    pub initrds: Vec<String>,
    /// The options (variables such as `$kernelopts` not yet expanded).
    pub options: String,
}

/// One item of a menu.
#[derive(Debug, Clone)]
enum Item {
    Entry {
        title: String,
        id: Option<String>,
        body: Vec<Stmt>,
        /// The `root` the entry starts with.
        root: Option<usize>,
        bls: Option<BlsMenuEntry>,
    },
    Submenu {
        title: String,
        id: Option<String>,
        items: Vec<Item>,
    },
}

/// What the chosen entry boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubChoice {
    /// The entry's title, with the submenu's before it (`Advanced options>…`).
    pub title: String,
    /// The partition the kernel is on (`None`: the whole disk).
    pub partition: Option<usize>,
    /// The kernel's path there.
    pub kernel: String,
    /// The initrds: (partition, path).
    pub initrds: Vec<(Option<usize>, String)>,
    /// The command line GRUB passes (with `BOOT_IMAGE=` first, as GRUB does).
    pub cmdline: String,
}

struct Interp<'h> {
    host: &'h dyn Host,
    vars: HashMap<String, String>,
    functions: HashMap<String, Vec<Stmt>>,
    /// The menu being built (a stack: submenus push).
    menus: Vec<Vec<Item>>,
    steps: usize,
    entries: usize,
    /// The kernel and initrds an entry's body named.
    linux: Option<(Option<usize>, String, Vec<String>)>,
    initrds: Vec<(Option<usize>, String)>,
    not_linux: bool,
}

/// Reads `file` on `partition` and runs it, returning the menu's chosen entry.
pub fn choose(
    host: &dyn Host,
    partition: Option<usize>,
    file: &str,
) -> Result<GrubChoice, GrubError> {
    let mut interp = Interp::new(host, partition, file);
    interp.run_file(partition, file, 0)?;
    let menu = interp.menus.pop().unwrap_or_default();
    let default = interp.vars.get("default").cloned().unwrap_or_default();
    let default = if default == "saved" {
        interp.vars.get("saved_entry").cloned().unwrap_or_default()
    } else {
        default
    };
    let (title, item) = select(&menu, &default).ok_or(GrubError::NoEntries)?;
    interp.boot(title, item)
}

impl<'h> Interp<'h> {
    fn new(host: &'h dyn Host, partition: Option<usize>, file: &str) -> Self {
        let root = host.name_of(partition);
        let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
        let mut vars: HashMap<String, String> = [
            ("grub_platform", "pc"),
            ("grub_cpu", "i386"),
            ("menuentry_id_option", "--id"),
            ("feature_menuentry_id", "y"),
            ("feature_menuentry_options", "y"),
            ("feature_all_video_module", "y"),
            ("feature_default_font_path", "y"),
            ("feature_platform_search_hint", "y"),
            ("feature_timeout_style", "y"),
            ("feature_200_final", "y"),
            ("feature_nativedisk_cmd", "y"),
            ("feature_ntldr", "y"),
            ("feature_chainloader_bpb", "y"),
            ("feature_sleep_interruptible", "y"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        vars.insert("root".into(), root.clone());
        vars.insert("prefix".into(), format!("({root}){dir}"));
        vars.insert("cmdpath".into(), format!("({root}){dir}"));
        Self {
            host,
            vars,
            functions: HashMap::new(),
            menus: vec![Vec::new()],
            steps: 0,
            entries: 0,
            linux: None,
            initrds: Vec::new(),
            not_linux: false,
        }
    }

    fn expand(&self, word: &Word) -> String {
        word.iter()
            .map(|p| match p {
                Piece::Lit(s) => s.clone(),
                Piece::Var(n) => self.vars.get(n).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// Splits `(dev)/path` and resolves the device (the current `root` when absent).
    fn locate(&self, path: &str) -> (Option<usize>, String) {
        let current = || {
            let root = self.vars.get("root").cloned().unwrap_or_default();
            self.host
                .partition(root.trim_matches(|c| c == '(' || c == ')'))
                .unwrap_or(None)
        };
        if let Some(rest) = path.strip_prefix('(')
            && let Some((dev, p)) = rest.split_once(')')
        {
            let part = self.host.partition(dev).unwrap_or_else(current);
            return (
                part,
                if p.is_empty() {
                    "/".into()
                } else {
                    p.to_string()
                },
            );
        }
        (current(), path.to_string())
    }

    fn run_file(
        &mut self,
        partition: Option<usize>,
        file: &str,
        depth: usize,
    ) -> Result<(), GrubError> {
        if depth > MAX_DEPTH {
            return Err(GrubError::TooDeep);
        }
        let bytes = self
            .host
            .read(partition, file)
            .map_err(|e| GrubError::File(format!("{file}: {}", net::error::Chain(&e))))?;
        let text = String::from_utf8_lossy(&bytes);
        let stmts = parse(&text, file)?;
        self.run(&stmts, depth).map(|_| ())
    }

    /// Runs `stmts`; returns the last command's status (true: success).
    fn run(&mut self, stmts: &[Stmt], depth: usize) -> Result<bool, GrubError> {
        if depth > MAX_DEPTH {
            return Err(GrubError::TooDeep);
        }
        let mut status = true;
        for stmt in stmts {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err(GrubError::TooDeep);
            }
            status = match stmt {
                Stmt::Cmd(words) => {
                    let words: Vec<String> = words.iter().map(|w| self.expand(w)).collect();
                    self.command(&words, depth)?
                }
                Stmt::If {
                    branches,
                    otherwise,
                } => {
                    let mut ran = None;
                    for (cond, body) in branches {
                        if cond.is_empty() || self.run(cond, depth + 1)? {
                            ran = Some(self.run(body, depth + 1)?);
                            break;
                        }
                    }
                    match ran {
                        Some(s) => s,
                        None => self.run(otherwise, depth + 1)?,
                    }
                }
                Stmt::Menu {
                    submenu,
                    args,
                    body,
                } => {
                    let args: Vec<String> = args.iter().map(|w| self.expand(w)).collect();
                    self.menu_item(*submenu, &args, body, depth)?;
                    true
                }
                Stmt::Function { name, body } => {
                    self.functions.insert(name.clone(), body.clone());
                    true
                }
                Stmt::Loop => true,
            };
        }
        Ok(status)
    }

    /// `menuentry`/`submenu` arguments: the title and the `--id`.
    fn menu_item(
        &mut self,
        submenu: bool,
        args: &[String],
        body: &[Stmt],
        depth: usize,
    ) -> Result<(), GrubError> {
        let mut title = None;
        let mut id = None;
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            match a.as_str() {
                "--id" => {
                    id = args.get(i + 1).cloned();
                    i += 1;
                }
                "--class" | "--users" | "--hotkey" | "--source" => i += 1,
                s if s.starts_with("--id=") => id = Some(s["--id=".len()..].to_string()),
                s if s.starts_with("--") => {}
                "" if title.is_some() => {}
                _ if title.is_none() => title = Some(a.clone()),
                _ => {}
            }
            i += 1;
        }
        let title = title.unwrap_or_default();
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(GrubError::TooDeep);
        }
        if submenu {
            // A submenu's body runs when it is opened, in a context of its own; its entries
            // are what it defines.
            let saved = self.vars.clone();
            self.menus.push(Vec::new());
            self.run(body, depth + 1)?;
            let items = self.menus.pop().unwrap_or_default();
            self.vars = saved;
            self.push_item(Item::Submenu { title, id, items });
        } else {
            let root = self.locate("/").0;
            self.push_item(Item::Entry {
                title,
                id,
                body: body.to_vec(),
                root,
                bls: None,
            });
        }
        Ok(())
    }

    fn push_item(&mut self, item: Item) {
        if let Some(menu) = self.menus.last_mut() {
            menu.push(item);
        }
    }

    fn command(&mut self, words: &[String], depth: usize) -> Result<bool, GrubError> {
        let Some((cmd, args)) = words.split_first() else {
            return Ok(true);
        };
        match cmd.as_str() {
            "set" => {
                for a in args {
                    match a.split_once('=') {
                        Some((k, v)) => self.vars.insert(k.to_string(), v.to_string()),
                        None => self.vars.insert(a.clone(), String::new()),
                    };
                }
                Ok(true)
            }
            "unset" => {
                for a in args {
                    self.vars.remove(a);
                }
                Ok(true)
            }
            "[" | "test" => Ok(self.test(args)),
            "true" => Ok(true),
            "false" => Ok(false),
            "load_env" => {
                self.load_env(args);
                Ok(true)
            }
            "search" | "search.fs_uuid" | "search.fs_label" | "search.file" => {
                Ok(self.search(cmd, args))
            }
            "source" | "." => {
                if let Some(file) = args.first() {
                    let (part, path) = self.locate(file);
                    self.run_file(part, &path, depth + 1)?;
                }
                Ok(true)
            }
            "configfile" => {
                if let Some(file) = args.first() {
                    let (part, path) = self.locate(file);
                    // A new menu replaces this one, as GRUB's configfile does.
                    if let Some(menu) = self.menus.last_mut() {
                        menu.clear();
                    }
                    self.run_file(part, &path, depth + 1)?;
                }
                Ok(true)
            }
            "blscfg" => {
                let root = self.locate("/").0;
                for e in self.host.bls_entries(root) {
                    self.entries += 1;
                    self.push_item(Item::Entry {
                        title: e.title.clone(),
                        id: Some(e.id.clone()),
                        body: Vec::new(),
                        root,
                        bls: Some(e),
                    });
                }
                Ok(true)
            }
            "linux" | "linux16" | "linuxefi" => {
                let Some((kernel, rest)) = args.split_first() else {
                    return Ok(false);
                };
                let (part, path) = self.locate(kernel);
                self.linux = Some((part, path, rest.to_vec()));
                Ok(true)
            }
            "initrd" | "initrd16" | "initrdefi" => {
                self.initrds = args.iter().map(|a| self.locate(a)).collect();
                Ok(true)
            }
            "chainloader" | "multiboot" | "multiboot2" | "kfreebsd" | "knetbsd" | "kopenbsd"
            | "appleloader" => {
                self.not_linux = true;
                Ok(true)
            }
            _ => match self.functions.get(cmd).cloned() {
                Some(body) => self.run(&body, depth + 1),
                // insmod, echo, terminal, font, video and the rest: nothing to do here.
                None => Ok(true),
            },
        }
    }

    fn test(&self, args: &[String]) -> bool {
        let args: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "]")
            .collect();
        match args.as_slice() {
            [] => false,
            ["!", rest @ ..] => !self.test(&rest.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            [a] => !a.is_empty(),
            ["-n", a] => !a.is_empty(),
            ["-z", a] => a.is_empty(),
            ["-e" | "-f" | "-s", path] => {
                let (part, p) = self.locate(path);
                self.host
                    .read(part, &p)
                    .is_ok_and(|b| !b.is_empty() || args[0] != "-s")
            }
            ["-d", _] => false,
            [a, "=" | "==", b] => a == b,
            [a, "!=", b] => a != b,
            [a, op, b] => {
                let (x, y) = (a.parse::<i64>(), b.parse::<i64>());
                match (x, y, *op) {
                    (Ok(x), Ok(y), "-eq") => x == y,
                    (Ok(x), Ok(y), "-ne") => x != y,
                    (Ok(x), Ok(y), "-lt") => x < y,
                    (Ok(x), Ok(y), "-le") => x <= y,
                    (Ok(x), Ok(y), "-gt") => x > y,
                    (Ok(x), Ok(y), "-ge") => x >= y,
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// `load_env [-f FILE] [--skip-sig] [VAR…]`: `grubenv` beside the configuration.
    fn load_env(&mut self, args: &[String]) {
        let mut file = format!(
            "{}/grubenv",
            self.vars.get("prefix").cloned().unwrap_or_default()
        );
        let mut wanted = Vec::new();
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "-f" | "--file" => {
                    if let Some(f) = args.get(i + 1) {
                        file = f.clone();
                    }
                    i += 1;
                }
                s if s.starts_with('-') => {}
                s => wanted.push(s.to_string()),
            }
            i += 1;
        }
        let (part, path) = self.locate(&file);
        let Ok(bytes) = self.host.read(part, &path) else {
            return;
        };
        for line in String::from_utf8_lossy(&bytes).lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=')
                && (wanted.is_empty() || wanted.iter().any(|w| w == k))
            {
                self.vars.insert(k.to_string(), v.to_string());
            }
        }
    }

    /// `search` in its forms; sets the variable (default `root`) and reports success.
    fn search(&mut self, cmd: &str, args: &[String]) -> bool {
        let mut kind = match cmd {
            "search.fs_uuid" => "uuid",
            "search.fs_label" => "label",
            "search.file" => "file",
            _ => "file",
        };
        let mut var = "root".to_string();
        let mut positional = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            match a {
                "-u" | "--fs-uuid" => kind = "uuid",
                "-l" | "--label" => kind = "label",
                "-f" | "--file" => kind = "file",
                // `--set=VAR`; a bare `--set` (its argument is optional) means root.
                "-s" | "--set" => var = "root".to_string(),
                s if s.starts_with("--set=") => var = s["--set=".len()..].to_string(),
                s if s.starts_with("--hint") => {
                    if !s.contains('=') {
                        i += 1;
                    }
                }
                s if s.starts_with('-') => {}
                s => positional.push(s.to_string()),
            }
            i += 1;
        }
        // search.fs_uuid UUID VAR: the second positional word is the variable.
        if cmd.starts_with("search.") && positional.len() > 1 {
            var = positional[1].clone();
        }
        let Some(what) = positional.first() else {
            return false;
        };
        let found = match kind {
            "uuid" => self.host.find_fs(what, false),
            "label" => self.host.find_fs(what, true),
            _ => self.host.find_file(what),
        };
        match found {
            Some(part) => {
                self.vars.insert(var, self.host.name_of(part));
                true
            }
            None => false,
        }
    }

    /// Runs the chosen entry and returns what it boots.
    fn boot(&mut self, title: String, item: &Item) -> Result<GrubChoice, GrubError> {
        let Item::Entry {
            body, root, bls, ..
        } = item
        else {
            return Err(GrubError::NoEntries);
        };
        self.vars.insert("root".into(), self.host.name_of(*root));
        self.vars.insert("chosen".into(), title.clone());
        self.linux = None;
        self.initrds.clear();
        self.not_linux = false;
        if let Some(e) = bls {
            // blscfg's entry: linux, initrd and the options, expanded now.
            let options = parse(&format!("x {}", e.options), "BLS options")
                .ok()
                .and_then(|s| match s.first() {
                    Some(Stmt::Cmd(w)) => {
                        Some(w[1..].iter().map(|w| self.expand(w)).collect::<Vec<_>>())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            self.linux = Some((*root, e.linux.clone(), options));
            self.initrds = e.initrds.iter().map(|i| (*root, i.clone())).collect();
        } else {
            self.run(body, 1)?;
        }
        if self.not_linux && self.linux.is_none() {
            return Err(GrubError::NotLinux(title));
        }
        let Some((partition, kernel, args)) = self.linux.take() else {
            return Err(GrubError::NotLinux(title));
        };
        let mut cmdline = format!("BOOT_IMAGE={kernel}");
        for a in args.iter().filter(|a| !a.is_empty()) {
            cmdline.push(' ');
            cmdline.push_str(a);
        }
        Ok(GrubChoice {
            title,
            partition,
            kernel,
            initrds: std::mem::take(&mut self.initrds),
            cmdline,
        })
    }
}

/// The item `default` names in `menu`, with its full title: an index (`2`, `1>0`), a title
/// or an id (`Advanced>…` into submenus), else the first entry. GRUB falls back to the first
/// entry when `default` names nothing.
fn select<'m>(menu: &'m [Item], default: &str) -> Option<(String, &'m Item)> {
    let by_path = |path: &str| -> Option<(String, &'m Item)> {
        let mut items = menu;
        let mut titles = Vec::new();
        let parts: Vec<&str> = path.split('>').collect();
        for (i, part) in parts.iter().enumerate() {
            let found = match part.parse::<usize>() {
                Ok(n) => items.get(n),
                Err(_) => items.iter().find(|it| match it {
                    Item::Entry { title, id, .. } | Item::Submenu { title, id, .. } => {
                        title == part || id.as_deref() == Some(*part)
                    }
                }),
            }?;
            match found {
                Item::Submenu {
                    title,
                    items: inner,
                    ..
                } => {
                    titles.push(title.clone());
                    if i + 1 == parts.len() {
                        // A submenu itself: its first entry.
                        let first = inner.iter().find(|it| matches!(it, Item::Entry { .. }))?;
                        if let Item::Entry { title, .. } = first {
                            titles.push(title.clone());
                        }
                        return Some((titles.join(">"), first));
                    }
                    items = inner;
                }
                Item::Entry { title, .. } => {
                    if i + 1 != parts.len() {
                        return None;
                    }
                    titles.push(title.clone());
                    return Some((titles.join(">"), found));
                }
            }
        }
        None
    };
    let default = default.trim();
    if !default.is_empty()
        && let Some(found) = by_path(default)
    {
        return Some(found);
    }
    // An id or title anywhere, then the first entry.
    by_path("0").or_else(|| {
        menu.iter().find_map(|it| match it {
            Item::Entry { title, .. } => Some((title.clone(), it)),
            Item::Submenu { .. } => None,
        })
    })
}

#[cfg(test)]
mod tests;
