//! The imaginary container behind exec and attach: a deterministic, in-process command set (`echo`, `cat`, `exit`,
//! `whoami`, `stream`, ...) and a tiny `sh` with a terminal line discipline for tty sessions.
//!
//! Owns what a "process" reads and writes, through channels the transports (WebSocket, SPDY) feed and drain. It
//! must never touch the host: no real processes, files or network, and nothing that blocks a transport (output goes
//! through a bounded channel, so a slow client slows the process down instead of growing memory).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};

use super::ExecRequest;

/// Output is cut into pieces of at most this size, matching what a runtime's pipe reads deliver.
pub(crate) const CHUNK: usize = 32 * 1024;

/// What `stream N` writes: byte `i` of its output is `STREAM_PATTERN[i % 64]`, so a reader can check content too.
pub(crate) const STREAM_PATTERN: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// How long `stty size` waits for the client's first resize event, which races the command's start.
const FIRST_SIZE_WAIT: Duration = Duration::from_secs(1);

/// `sh -c "sh -c ..."` nests at most this deep, so a hostile command line cannot recurse without bound.
const MAX_NESTING: usize = 16;

/// A terminal size as the client reports it on the resize channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TermSize {
    pub width: u16,
    pub height: u16,
}

/// One piece of process output.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// A running imaginary process, as a transport sees it. Dropping it kills the process.
pub(crate) struct Process {
    stdin: Option<mpsc::UnboundedSender<Bytes>>,
    resize: watch::Sender<Option<TermSize>>,
    output: mpsc::Receiver<Output>,
    task: JoinHandle<i32>,
    output_closed: bool,
    exit: Option<i32>,
}

/// What a running process asks of its transport.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Output(Output),
    /// All output has been taken and the process ended with this code.
    Exited(i32),
}

impl Process {
    /// Starts the request's command (or, for attach, the pod's main shell).
    pub(crate) fn start(request: &ExecRequest) -> Self {
        let (stdin, input) = if request.stdin {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Input::Pipe(rx))
        } else if request.attach {
            // An attached main process keeps its own stdin open; without -i the client just watches it.
            (None, Input::Never)
        } else {
            (None, Input::Closed)
        };
        let (resize, size) = watch::channel(None);
        let (out_tx, output) = mpsc::channel(8);
        let mut proc = Proc {
            tty: request.tty,
            stdout: request.stdout,
            stderr: request.stderr,
            user: request.user.clone(),
            hostname: request.pod.clone(),
            input,
            pending: VecDeque::new(),
            eof: false,
            escape: Escape::None,
            out: out_tx,
            size,
            last_status: 0,
        };
        let attach = request.attach;
        let argv = request.command.clone();
        let task = tokio::spawn(async move {
            if attach {
                proc.interactive().await
            } else {
                match proc.run_argv(&argv, Context::Exec, 0).await {
                    Flow::Exit(code) | Flow::Status(code) => code,
                }
            }
        });
        Self {
            stdin,
            resize,
            output,
            task,
            output_closed: false,
            exit: None,
        }
    }

    /// Hands bytes to the process's stdin; dropped silently once stdin is closed, like a write to a closed pipe.
    pub(crate) fn write_stdin(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if let Some(stdin) = &self.stdin {
            let _ = stdin.send(data);
        }
    }

    /// Closes the process's stdin: it sees EOF once it has read what was already sent.
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub(crate) fn resize(&self, size: TermSize) {
        self.resize.send_replace(Some(size));
    }

    /// The next thing a transport must act on: output while there is any, then the exit code. Cancel-safe.
    pub(crate) async fn next_event(&mut self) -> Event {
        if !self.output_closed {
            if let Some(output) = self.output.recv().await {
                return Event::Output(output);
            }
            self.output_closed = true;
        }
        Event::Exited(self.wait().await)
    }

    /// The exit code. Cancel-safe, and idempotent once the process has ended.
    pub(crate) async fn wait(&mut self) -> i32 {
        if let Some(code) = self.exit {
            return code;
        }
        let code = match (&mut self.task).await {
            Ok(code) => code,
            Err(err) => {
                tracing::warn!(error = %err, "imaginary process failed");
                1
            }
        };
        self.exit = Some(code);
        code
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Input {
    Pipe(mpsc::UnboundedReceiver<Bytes>),
    Closed,
    Never,
}

/// Where a command line runs: directly as the exec'd process, or inside the fake shell. They differ in how an
/// unknown command is reported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Exec,
    Shell,
}

/// The outcome of one command: `Exit` ends the enclosing shell (the `exit` builtin), `Status` just sets `$?`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Exit(i32),
    Status(i32),
}

/// What canonical-mode terminal input yields.
#[derive(Debug, PartialEq, Eq)]
enum Canon {
    /// A line, ending in `\n` unless it was pushed out by ^D.
    Data(Vec<u8>),
    Eof,
    Interrupt,
}

/// Where the line discipline is inside an escape sequence (arrow keys and the like are swallowed).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Start,
    Sequence,
}

/// How commands within one script line are joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connector {
    Seq,
    And,
    Or,
}

struct Proc {
    tty: bool,
    stdout: bool,
    stderr: bool,
    user: String,
    hostname: String,
    input: Input,
    pending: VecDeque<u8>,
    eof: bool,
    escape: Escape,
    out: mpsc::Sender<Output>,
    size: watch::Receiver<Option<TermSize>>,
    last_status: i32,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Proc {
    // ---- output -------------------------------------------------------------------------------------------

    async fn send(&mut self, make: fn(Bytes) -> Output, data: &[u8]) {
        for piece in data.chunks(CHUNK) {
            if self
                .out
                .send(make(Bytes::copy_from_slice(piece)))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Writes to the terminal as is (prompt, echo), bypassing output post-processing.
    async fn write_raw(&mut self, data: &[u8]) {
        if self.stdout {
            self.send(Output::Stdout, data).await;
        }
    }

    async fn write_out(&mut self, data: &[u8]) {
        if !self.stdout {
            return;
        }
        if self.tty {
            // The terminal's output processing (onlcr) turns every newline into CR LF.
            let mut converted = Vec::with_capacity(data.len() + data.len() / 16);
            for &byte in data {
                if byte == b'\n' {
                    converted.push(b'\r');
                }
                converted.push(byte);
            }
            self.send(Output::Stdout, &converted).await;
        } else {
            self.send(Output::Stdout, data).await;
        }
    }

    async fn write_err(&mut self, data: &[u8]) {
        if self.tty {
            // A tty has one output stream; stderr lands on it too.
            self.write_out(data).await;
        } else if self.stderr {
            self.send(Output::Stderr, data).await;
        }
    }

    // ---- input --------------------------------------------------------------------------------------------

    /// Waits for more stdin; false at EOF.
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let next = match &mut self.input {
            Input::Pipe(rx) => rx.recv().await,
            Input::Closed => None,
            Input::Never => std::future::pending().await,
        };
        match next {
            Some(bytes) => {
                self.pending.extend(bytes.iter().copied());
                true
            }
            None => {
                self.eof = true;
                false
            }
        }
    }

    /// Raw stdin (no tty): whatever arrived, up to one output chunk; `None` at EOF.
    async fn read_raw(&mut self) -> Option<Vec<u8>> {
        if self.pending.is_empty() && !self.fill().await {
            return None;
        }
        let n = self.pending.len().min(CHUNK);
        Some(self.pending.drain(..n).collect())
    }

    /// One line of raw stdin (no tty), newline included; a last line without one is returned as is.
    async fn read_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                return Some(self.pending.drain(..=pos).collect());
            }
            if !self.fill().await {
                if self.pending.is_empty() {
                    return None;
                }
                return Some(self.pending.drain(..).collect());
            }
        }
    }

    /// Canonical-mode terminal input: echoes what is typed, handles erase/kill/^C/^D, returns at end of line.
    async fn read_canonical(&mut self) -> Canon {
        let mut line = Vec::new();
        loop {
            let mut echo = Vec::new();
            let mut done = None;
            while let Some(byte) = self.pending.pop_front() {
                if let Some(result) = self.discipline(byte, &mut line, &mut echo) {
                    done = Some(result);
                    break;
                }
            }
            if !echo.is_empty() {
                self.write_raw(&echo).await;
            }
            if let Some(result) = done {
                return result;
            }
            if !self.fill().await {
                return if line.is_empty() {
                    Canon::Eof
                } else {
                    Canon::Data(line)
                };
            }
        }
    }

    /// Feeds one typed byte through the line discipline; returns a result when the line is complete.
    fn discipline(&mut self, byte: u8, line: &mut Vec<u8>, echo: &mut Vec<u8>) -> Option<Canon> {
        match self.escape {
            Escape::Start => {
                self.escape = if byte == b'[' || byte == b'O' {
                    Escape::Sequence
                } else {
                    Escape::None
                };
                return None;
            }
            Escape::Sequence => {
                if (0x40..=0x7e).contains(&byte) {
                    self.escape = Escape::None;
                }
                return None;
            }
            Escape::None => {}
        }
        match byte {
            0x1b => self.escape = Escape::Start,
            b'\r' | b'\n' => {
                echo.extend_from_slice(b"\r\n");
                line.push(b'\n');
                return Some(Canon::Data(std::mem::take(line)));
            }
            0x7f | 0x08 if erase_char(line) => echo.extend_from_slice(b"\x08 \x08"),
            // Erasing at the start of a line does nothing.
            0x7f | 0x08 => {}
            0x15 => {
                while erase_char(line) {
                    echo.extend_from_slice(b"\x08 \x08");
                }
            }
            0x03 => {
                echo.extend_from_slice(b"^C\r\n");
                line.clear();
                return Some(Canon::Interrupt);
            }
            0x04 => {
                return Some(if line.is_empty() {
                    Canon::Eof
                } else {
                    Canon::Data(std::mem::take(line))
                });
            }
            b'\t' | 0x20..=0xff => {
                line.push(byte);
                echo.push(byte);
            }
            _ => {}
        }
        None
    }

    /// Input for a filter like `cat`: canonical lines on a tty, raw chunks otherwise.
    async fn read_input(&mut self) -> Canon {
        if self.tty {
            self.read_canonical().await
        } else {
            match self.read_raw().await {
                Some(data) => Canon::Data(data),
                None => Canon::Eof,
            }
        }
    }

    /// Takes a pending ^C typed while a command was not reading, as the terminal's ISIG would.
    fn take_interrupt(&mut self) -> bool {
        match self.pending.iter().position(|&b| b == 0x03) {
            Some(pos) => {
                self.pending.drain(..=pos);
                true
            }
            None => false,
        }
    }

    // ---- shell --------------------------------------------------------------------------------------------

    /// The interactive shell: prompt (tty only), read a line, run it; `exit N` ends it with N, EOF with 0.
    async fn interactive(&mut self) -> i32 {
        loop {
            if self.tty {
                self.write_raw(b"$ ").await;
            }
            let line = if self.tty {
                match self.read_canonical().await {
                    Canon::Data(line) => line,
                    Canon::Eof => return 0,
                    Canon::Interrupt => {
                        self.last_status = 130;
                        continue;
                    }
                }
            } else {
                match self.read_line().await {
                    Some(line) => line,
                    None => return 0,
                }
            };
            let text = String::from_utf8_lossy(&line).into_owned();
            if let Flow::Exit(code) = self.run_script(&text, 1).await {
                return code;
            }
        }
    }

    /// `sh ARGS`: `-c SCRIPT` runs the script, no argument starts the interactive shell.
    async fn shell(&mut self, args: &[String], depth: usize) -> i32 {
        match args.first().map(String::as_str) {
            None | Some("-i") | Some("-l") | Some("-s") => self.interactive().await,
            Some("-c") => match args.get(1) {
                Some(script) => match self.run_script(script, depth + 1).await {
                    Flow::Exit(code) | Flow::Status(code) => code,
                },
                None => {
                    self.write_err(b"sh: 0: -c requires an argument\n").await;
                    2
                }
            },
            Some(file) => {
                let message = format!("sh: 0: cannot open {file}: No such file\n");
                self.write_err(message.as_bytes()).await;
                2
            }
        }
    }

    fn run_script<'a>(&'a mut self, script: &'a str, depth: usize) -> BoxFuture<'a, Flow> {
        Box::pin(async move {
            let commands = match split_commands(script) {
                Ok(commands) => commands,
                Err(problem) => {
                    let message = format!("sh: 1: Syntax error: {problem}\n");
                    self.write_err(message.as_bytes()).await;
                    self.last_status = 2;
                    return Flow::Status(2);
                }
            };
            let mut status = self.last_status;
            for (connector, text) in commands {
                let run = match connector {
                    Connector::Seq => true,
                    Connector::And => status == 0,
                    Connector::Or => status != 0,
                };
                if !run {
                    continue;
                }
                let words = match split_words(&text, self.last_status) {
                    Ok(words) => words,
                    Err(problem) => {
                        let message = format!("sh: 1: Syntax error: {problem}\n");
                        self.write_err(message.as_bytes()).await;
                        status = 2;
                        self.last_status = 2;
                        continue;
                    }
                };
                if words.is_empty() {
                    continue;
                }
                match self.run_argv(&words, Context::Shell, depth).await {
                    Flow::Exit(code) => return Flow::Exit(code),
                    Flow::Status(code) => {
                        status = code;
                        self.last_status = code;
                    }
                }
            }
            Flow::Status(status)
        })
    }

    // ---- commands -----------------------------------------------------------------------------------------

    fn run_argv<'a>(
        &'a mut self,
        argv: &'a [String],
        context: Context,
        depth: usize,
    ) -> BoxFuture<'a, Flow> {
        Box::pin(async move {
            let Some(program) = argv.first() else {
                return Flow::Status(0);
            };
            if depth > MAX_NESTING {
                self.write_err(b"sh: nested too deeply\n").await;
                return Flow::Status(2);
            }
            let args = &argv[1..];
            let name = program.rsplit('/').next().unwrap_or(program);
            let code = match name {
                "echo" => self.echo(args).await,
                "cat" => self.cat(args).await,
                "true" | ":" => 0,
                "false" => 1,
                "exit" => return Flow::Exit(self.exit_code(args).await),
                "sh" | "bash" | "ash" | "dash" => self.shell(args, depth).await,
                "whoami" => {
                    let line = format!("{}\n", self.user);
                    self.write_out(line.as_bytes()).await;
                    0
                }
                "hostname" => {
                    let line = format!("{}\n", self.hostname);
                    self.write_out(line.as_bytes()).await;
                    0
                }
                "pwd" => {
                    self.write_out(b"/\n").await;
                    0
                }
                "stderr" => {
                    let line = format!("{}\n", args.join(" "));
                    self.write_err(line.as_bytes()).await;
                    0
                }
                "stream" => self.stream(args).await,
                "sleep" => self.sleep(args).await,
                "stty" => self.stty(args).await,
                _ => {
                    let message = match context {
                        Context::Shell => format!("sh: 1: {program}: not found\n"),
                        Context::Exec => format!(
                            "OCI runtime exec failed: exec failed: unable to start container process: exec: \
                             \"{program}\": executable file not found in $PATH: unknown\n"
                        ),
                    };
                    self.write_err(message.as_bytes()).await;
                    127
                }
            };
            Flow::Status(code)
        })
    }

    async fn echo(&mut self, args: &[String]) -> i32 {
        let (newline, words) = match args.first().map(String::as_str) {
            Some("-n") => (false, &args[1..]),
            _ => (true, args),
        };
        let mut line = words.join(" ");
        if newline {
            line.push('\n');
        }
        self.write_out(line.as_bytes()).await;
        0
    }

    async fn cat(&mut self, args: &[String]) -> i32 {
        let mut status = 0;
        let sources: Vec<&str> = if args.is_empty() {
            vec!["-"]
        } else {
            args.iter().map(String::as_str).collect()
        };
        for source in sources {
            if source != "-" {
                let message = format!("cat: {source}: No such file or directory\n");
                self.write_err(message.as_bytes()).await;
                status = 1;
                continue;
            }
            loop {
                match self.read_input().await {
                    Canon::Data(data) => self.write_out(&data).await,
                    Canon::Eof => break,
                    Canon::Interrupt => return 130,
                }
            }
        }
        status
    }

    async fn exit_code(&mut self, args: &[String]) -> i32 {
        match args.first() {
            None => self.last_status,
            Some(arg) => match arg.parse::<i64>() {
                Ok(n) => (n & 0xff) as i32,
                Err(_) => {
                    let message = format!("sh: 1: exit: Illegal number: {arg}\n");
                    self.write_err(message.as_bytes()).await;
                    2
                }
            },
        }
    }

    async fn stream(&mut self, args: &[String]) -> i32 {
        let Some(total) = args.first().and_then(|n| n.parse::<u64>().ok()) else {
            self.write_err(b"stream: usage: stream BYTES\n").await;
            return 2;
        };
        if !self.stdout {
            return 0;
        }
        // CHUNK is a multiple of the pattern length, so every chunk starts at pattern offset 0.
        let chunk = Bytes::from(
            STREAM_PATTERN
                .iter()
                .copied()
                .cycle()
                .take(CHUNK)
                .collect::<Vec<u8>>(),
        );
        let mut left = total;
        while left > 0 {
            let take = left.min(CHUNK as u64) as usize;
            if self
                .out
                .send(Output::Stdout(chunk.slice(..take)))
                .await
                .is_err()
            {
                break;
            }
            left -= take as u64;
        }
        0
    }

    async fn sleep(&mut self, args: &[String]) -> i32 {
        let Some(arg) = args.first() else {
            self.write_err(b"sleep: missing operand\n").await;
            return 1;
        };
        let seconds = arg.strip_suffix('s').unwrap_or(arg).parse::<f64>().ok();
        let Some(duration) = seconds.and_then(|s| Duration::try_from_secs_f64(s).ok()) else {
            let message = format!("sleep: invalid time interval '{arg}'\n");
            self.write_err(message.as_bytes()).await;
            return 1;
        };
        let deadline = Instant::now()
            .checked_add(duration)
            .unwrap_or_else(far_future);
        loop {
            if self.tty && self.take_interrupt() {
                self.write_raw(b"^C\r\n").await;
                return 130;
            }
            let watch_input = self.tty && !self.eof;
            tokio::select! {
                _ = sleep_until(deadline) => return 0,
                _ = self.fill(), if watch_input => {}
            }
        }
    }

    async fn stty(&mut self, args: &[String]) -> i32 {
        if !self.tty {
            self.write_err(b"stty: 'standard input': Inappropriate ioctl for device\n")
                .await;
            return 1;
        }
        if args.first().map(String::as_str) != Some("size") {
            // Mode changes (raw, -echo, ...) are accepted and have no effect on this imaginary terminal.
            return 0;
        }
        let _ = timeout(FIRST_SIZE_WAIT, self.size.wait_for(Option::is_some)).await;
        let size = *self.size.borrow();
        let (rows, cols) = size.map_or((0, 0), |s| (s.height, s.width));
        let line = format!("{rows} {cols}\n");
        self.write_out(line.as_bytes()).await;
        0
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Removes the last (UTF-8) character of a line being typed; false if there was none.
fn erase_char(line: &mut Vec<u8>) -> bool {
    if line.is_empty() {
        return false;
    }
    while let Some(byte) = line.pop() {
        if byte & 0xc0 != 0x80 {
            break;
        }
    }
    true
}

/// Splits a script into commands joined by `;`, newlines, `&&` and `||`, keeping quoted text intact.
fn split_commands(script: &str) -> Result<Vec<(Connector, String)>, &'static str> {
    let mut commands = Vec::new();
    let mut current = String::new();
    let mut connector = Connector::Seq;
    let mut chars = script.chars().peekable();
    let mut at_word_start = true;
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                current.push(c);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(inner) => current.push(inner),
                        None => return Err("Unterminated quoted string"),
                    }
                }
                current.push('\'');
            }
            '"' => {
                current.push(c);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => {
                            current.push('\\');
                            match chars.next() {
                                Some(escaped) => current.push(escaped),
                                None => return Err("Unterminated quoted string"),
                            }
                        }
                        Some(inner) => current.push(inner),
                        None => return Err("Unterminated quoted string"),
                    }
                }
                current.push('"');
            }
            '\\' => {
                current.push(c);
                if let Some(escaped) = chars.next() {
                    current.push(escaped);
                }
            }
            '#' if at_word_start => {
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        break;
                    }
                }
                commands.push((connector, std::mem::take(&mut current)));
                connector = Connector::Seq;
            }
            ';' | '\n' => {
                commands.push((connector, std::mem::take(&mut current)));
                connector = Connector::Seq;
            }
            '&' if chars.peek() == Some(&'&') => {
                chars.next();
                if current.trim().is_empty() {
                    return Err("\"&&\" unexpected");
                }
                commands.push((connector, std::mem::take(&mut current)));
                connector = Connector::And;
            }
            '|' if chars.peek() == Some(&'|') => {
                chars.next();
                if current.trim().is_empty() {
                    return Err("\"||\" unexpected");
                }
                commands.push((connector, std::mem::take(&mut current)));
                connector = Connector::Or;
            }
            _ => current.push(c),
        }
        at_word_start = current.is_empty() || current.ends_with(char::is_whitespace);
    }
    if connector != Connector::Seq && current.trim().is_empty() {
        return Err("end of file unexpected");
    }
    commands.push((connector, current));
    commands.retain(|(_, text)| !text.trim().is_empty());
    Ok(commands)
}

/// Splits one command into words: quotes, backslash escapes and `$?`.
fn split_words(text: &str, last_status: i32) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(inner) => word.push(inner),
                        None => return Err("Unterminated quoted string"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(escaped @ ('"' | '\\' | '$' | '`')) => word.push(escaped),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => return Err("Unterminated quoted string"),
                        },
                        Some('$') if chars.peek() == Some(&'?') => {
                            chars.next();
                            word.push_str(&last_status.to_string());
                        }
                        Some(inner) => word.push(inner),
                        None => return Err("Unterminated quoted string"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(escaped) = chars.next() {
                    word.push(escaped);
                }
            }
            '$' if chars.peek() == Some(&'?') => {
                chars.next();
                in_word = true;
                word.push_str(&last_status.to_string());
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: &[&str], stdin: bool, tty: bool) -> ExecRequest {
        ExecRequest {
            namespace: "default".into(),
            pod: "web-0".into(),
            container: None,
            command: command.iter().map(|s| s.to_string()).collect(),
            stdin,
            stdout: true,
            stderr: !tty,
            tty,
            attach: false,
            user: "alice".into(),
        }
    }

    /// Runs a process to completion, feeding `input` then closing stdin; returns (stdout, stderr, exit code).
    async fn run(request: ExecRequest, input: &[&[u8]]) -> (String, String, i32) {
        let mut process = Process::start(&request);
        for piece in input {
            process.write_stdin(Bytes::copy_from_slice(piece));
        }
        process.close_stdin();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = loop {
            match process.next_event().await {
                Event::Output(Output::Stdout(b)) => out.extend_from_slice(&b),
                Event::Output(Output::Stderr(b)) => err.extend_from_slice(&b),
                Event::Exited(code) => break code,
            }
        };
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            code,
        )
    }

    #[tokio::test]
    async fn simple_commands() {
        assert_eq!(
            run(request(&["echo", "hi", "there"], false, false), &[]).await,
            ("hi there\n".into(), "".into(), 0)
        );
        assert_eq!(
            run(request(&["/bin/echo", "-n", "x"], false, false), &[])
                .await
                .0,
            "x"
        );
        assert_eq!(run(request(&["true"], false, false), &[]).await.2, 0);
        assert_eq!(run(request(&["false"], false, false), &[]).await.2, 1);
        assert_eq!(
            run(request(&["exit", "300"], false, false), &[]).await.2,
            44
        );
        assert_eq!(
            run(request(&["whoami"], false, false), &[]).await.0,
            "alice\n"
        );
        assert_eq!(
            run(request(&["hostname"], false, false), &[]).await.0,
            "web-0\n"
        );
        assert_eq!(
            run(request(&["stderr", "oops", "now"], false, false), &[]).await,
            ("".into(), "oops now\n".into(), 0)
        );
        assert_eq!(
            run(request(&["sleep", "0.01"], false, false), &[]).await.2,
            0
        );
        assert_eq!(
            run(request(&["sleep", "nope"], false, false), &[]).await.2,
            1
        );
    }

    #[tokio::test]
    async fn unknown_commands_fail_like_a_runtime() {
        let (out, err, code) = run(request(&["kubectl-nope"], false, false), &[]).await;
        assert_eq!(out, "");
        assert!(
            err.contains("\"kubectl-nope\": executable file not found in $PATH"),
            "{err}"
        );
        assert_eq!(code, 127);
        let (_, err, code) = run(request(&["sh", "-c", "nope"], false, false), &[]).await;
        assert_eq!((err.as_str(), code), ("sh: 1: nope: not found\n", 127));
    }

    #[tokio::test]
    async fn sh_c_scripts() {
        assert_eq!(
            run(request(&["sh", "-c", "exit 3"], false, false), &[])
                .await
                .2,
            3
        );
        let (out, _, code) = run(
            request(
                &["sh", "-c", "false; echo $?; true && echo 'a  b' || echo no"],
                false,
                false,
            ),
            &[],
        )
        .await;
        assert_eq!((out.as_str(), code), ("1\na  b\n", 0));
        let (out, _, _) = run(
            request(
                &["bash", "-c", "echo \"x\\\"y\" z\\ w # comment"],
                false,
                false,
            ),
            &[],
        )
        .await;
        assert_eq!(out, "x\"y z w\n");
        let (_, err, code) = run(request(&["sh", "-c", "echo 'open"], false, false), &[]).await;
        assert_eq!(code, 2);
        assert!(err.contains("Unterminated"));
    }

    #[tokio::test]
    async fn cat_copies_stdin_until_eof() {
        let (out, _, code) = run(
            request(&["cat"], true, false),
            &[b"hello ", b"world\n", b"tail"],
        )
        .await;
        assert_eq!((out.as_str(), code), ("hello world\ntail", 0));
        assert_eq!(
            run(request(&["cat"], false, false), &[]).await,
            ("".into(), "".into(), 0)
        );
        assert_eq!(
            run(request(&["cat", "/etc/x"], false, false), &[]).await.2,
            1
        );
    }

    #[tokio::test]
    async fn stream_writes_exact_byte_counts() {
        let (out, _, code) = run(request(&["stream", "100000"], false, false), &[]).await;
        assert_eq!(code, 0);
        assert_eq!(out.len(), 100_000);
        assert!(out
            .bytes()
            .enumerate()
            .all(|(i, b)| b == STREAM_PATTERN[i % 64]));
        assert_eq!(
            run(request(&["stream", "0"], false, false), &[]).await.0,
            ""
        );
    }

    #[tokio::test]
    async fn non_tty_shell_reads_lines() {
        let (out, err, code) = run(
            request(&["sh"], true, false),
            &[b"echo one\nwhoami\nstderr e\n", b"exit 7\necho never\n"],
        )
        .await;
        assert_eq!(
            (out.as_str(), err.as_str(), code),
            ("one\nalice\n", "e\n", 7)
        );
        assert_eq!(
            run(request(&["sh"], true, false), &[b"echo last"]).await,
            ("last\n".into(), "".into(), 0)
        );
    }

    #[tokio::test]
    async fn tty_shell_behaves_like_a_terminal() {
        let (out, err, code) = run(
            request(&["/bin/sh"], true, true),
            &[b"echo hx\x7fi\r", b"stderr bad\rexit 4\r"],
        )
        .await;
        assert_eq!(err, "");
        assert_eq!(code, 4);
        assert_eq!(
            out,
            "$ echo hx\x08 \x08i\r\nhi\r\n$ stderr bad\r\nbad\r\n$ exit 4\r\n"
        );
        // ^C discards the line, ^D on an empty line ends the shell with 0, escape sequences are swallowed.
        let (out, _, _) = run(
            request(&["sh"], true, true),
            &[b"\x7f\x7fecho \xc3\xa9\x7fe\r"],
        )
        .await;
        assert_eq!(out, "$ echo \u{e9}\x08 \x08e\r\ne\r\n$ ");
        let (out, _, code) = run(
            request(&["sh"], true, true),
            &[b"abc\x03\x1b[Aecho $?\r\x04"],
        )
        .await;
        assert_eq!(code, 0);
        assert_eq!(out, "$ abc^C\r\n$ echo $?\r\n130\r\n$ ");
    }

    #[tokio::test]
    async fn stty_size_reports_the_last_resize() {
        let mut process = Process::start(&request(&["sh"], true, true));
        process.resize(TermSize {
            width: 100,
            height: 20,
        });
        process.write_stdin(Bytes::from_static(b"stty size\r"));
        process.resize(TermSize {
            width: 120,
            height: 40,
        });
        process.close_stdin();
        let mut out = Vec::new();
        while let Event::Output(Output::Stdout(b)) = process.next_event().await {
            out.extend_from_slice(&b);
        }
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("\r\n40 120\r\n") || out.contains("\r\n20 100\r\n"),
            "{out:?}"
        );
        assert_eq!(
            run(request(&["stty", "size"], false, false), &[]).await.2,
            1
        );
    }

    #[tokio::test]
    async fn attach_without_stdin_keeps_running() {
        let mut req = request(&[], false, true);
        req.attach = true;
        let mut process = Process::start(&req);
        assert_eq!(
            process.next_event().await,
            Event::Output(Output::Stdout(Bytes::from_static(b"$ ")))
        );
        assert!(timeout(Duration::from_millis(50), process.wait())
            .await
            .is_err());
    }

    #[test]
    fn script_splitting() {
        let split = split_commands("a; b && c || d\ne 'x;y' \"p&&q\"").unwrap();
        let texts: Vec<(Connector, &str)> = split.iter().map(|(c, t)| (*c, t.trim())).collect();
        assert_eq!(
            texts,
            vec![
                (Connector::Seq, "a"),
                (Connector::Seq, "b"),
                (Connector::And, "c"),
                (Connector::Or, "d"),
                (Connector::Seq, "e 'x;y' \"p&&q\""),
            ]
        );
        assert!(split_commands("&& a").is_err());
        assert!(split_commands("a &&").is_err());
        assert_eq!(
            split_words("e 'x;y' \"p&&q\" $?", 5).unwrap(),
            vec!["e", "x;y", "p&&q", "5"]
        );
        assert_eq!(split_words("''", 0).unwrap(), vec![""]);
    }
}
