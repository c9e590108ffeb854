//! The `shopstream` binary: parse the CLI, load the configuration, start tracing,
//! and hand over to the server library (`shopstream`) or the client tools
//! (`shopstream_tools`).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shopstream::config::{ClockMode, Config, RawConfig};
use shopstream::server::Server;
use shopstream_tools::client::{self, DemoWorkload};

#[derive(Parser)]
#[command(
    name = "shopstream",
    version,
    about = "Real-time stream processing for online shops"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// TOML configuration file (every key optional; see config/default.toml).
    #[arg(long, env = "SHOPSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// TCP ingest address (NDJSON or binary frames).
    #[arg(long, env = "SHOPSTREAM_INGEST_ADDR")]
    ingest_addr: Option<String>,
    /// HTTP address (queries, HTTP ingest, metrics).
    #[arg(long, env = "SHOPSTREAM_HTTP_ADDR")]
    http_addr: Option<String>,
    /// Directory of the durable log.
    #[arg(long, env = "SHOPSTREAM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Timely worker threads.
    #[arg(long, env = "SHOPSTREAM_WORKERS")]
    workers: Option<usize>,
    /// Engine clock for windows: event time or wall time.
    #[arg(long, value_enum, env = "SHOPSTREAM_CLOCK")]
    clock: Option<ClockMode>,
    /// Allow listening on a non-loopback address without [[auth.tokens]]
    /// (auth.insecure): anyone who reaches the ports may send and read everything.
    #[arg(long, env = "SHOPSTREAM_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: bool,
}

/// An API token for a server with access control on.
#[derive(clap::Args, Clone)]
struct TokenArg {
    /// API token: TCP ingest sends it as the first line (or frame), HTTP as
    /// `Authorization: Bearer`.
    #[arg(long, global = true, env = "SHOPSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run the server on embedded defaults with a demo workload streaming into it.
    Demo {
        /// Demo events per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Stop after this many seconds (0: run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Stream an NDJSON (or binary-frame) file to a server and wait for the final ack.
    Send {
        file: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7400")]
        addr: SocketAddr,
        /// Convert NDJSON to bincode frames on the client.
        #[arg(long)]
        binary: bool,
        /// With --binary: the server's reporting currency (amounts are converted on the client).
        #[arg(long, default_value = "USD")]
        currency: String,
        /// Also wait until the views include the last event (needs the HTTP address).
        #[arg(long)]
        wait_visible: Option<SocketAddr>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Write a deterministic, seeded shop workload (NDJSON or binary frames) to a
    /// file, to stdout, or straight to a server.
    Gen {
        #[command(flatten)]
        options: shopstream_tools::gen::GenOptions,
        /// Output file; `-` is stdout.
        #[arg(long, short = 'o', default_value = "-")]
        out: PathBuf,
        /// Bincode frames instead of NDJSON.
        #[arg(long)]
        binary: bool,
        /// Stream to this TCP ingest address instead, and wait for the final ack.
        #[arg(long)]
        to: Option<SocketAddr>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Drive a running server open loop: ingest at a target rate, profile queries at
    /// a target rate; report ack latency, freshness and query latency.
    Load {
        #[command(flatten)]
        args: shopstream_tools::load::LoadArgs,
        /// One JSON object on stdout instead of the table (and no progress).
        #[arg(long)]
        json: bool,
    },
    /// Inspect or repair the durable log (with the server stopped).
    Log {
        #[command(subcommand)]
        what: LogCommand,
    },
    /// Write a snapshot of every view now (a restart then reads it and only the
    /// log after it); prints where, and how large.
    Snapshot {
        #[arg(long, default_value = "127.0.0.1:7401")]
        addr: SocketAddr,
        /// A token with the admin scope, when access control is on.
        #[command(flatten)]
        token: TokenArg,
    },
    /// Query the server.
    Query {
        #[command(subcommand)]
        what: Query,
        #[arg(long, global = true, default_value = "127.0.0.1:7401")]
        addr: SocketAddr,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Access control helpers.
    Auth {
        #[command(subcommand)]
        what: AuthCommand,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Print the hex SHA-256 of the token read from stdin (one trailing newline is
    /// dropped): the `sha256` of its `[[auth.tokens]]` entry.
    Hash,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Report every damaged range and gap of the log; changes nothing. Exits 1
    /// when the log is damaged.
    Check(ServeArgs),
    /// Keep every intact record, move every damaged range to quarantine/ in the
    /// log directory, and record the lost epochs, so that the server starts again.
    Salvage(ServeArgs),
}

#[derive(Subcommand)]
enum Query {
    /// A user's profile.
    User {
        id: String,
        #[arg(long)]
        min_seq: Option<u64>,
    },
}

fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::embedded(),
    };
    if let Some(a) = &args.ingest_addr {
        raw.ingest.tcp_addr = a.clone();
    }
    if let Some(a) = &args.http_addr {
        raw.http.addr = a.clone();
    }
    if let Some(d) = &args.data_dir {
        raw.log.data_dir = d.clone();
    }
    if let Some(w) = args.workers {
        raw.engine.workers = w;
    }
    if let Some(c) = args.clock {
        raw.engine.clock = c;
    }
    if args.insecure {
        raw.auth.insecure = true;
    }
    Ok(raw.validate()?)
}

async fn start(config: Config) -> anyhow::Result<Server> {
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "replaying log {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let b = bar.clone();
    let dir = config.data_dir.clone();
    let server = Server::start(config, move |read, total| {
        b.set_length(total);
        b.set_position(read);
    })
    .await
    .with_context(|| format!("starting with data dir {}", dir.display()))?;
    bar.finish_and_clear();
    let r = server.engine.recovery();
    tracing::info!(
        records = r.records,
        events = r.events,
        truncated_bytes = r.truncated_bytes,
        "log replayed"
    );
    // One machine-readable line, so scripts and tests can find ports chosen by the OS.
    println!(
        "shopstream listening ingest={} http={} as_of={}",
        server.tcp_addr,
        server.http_addr,
        server.engine.readable().seq
    );
    std::io::stdout().flush().ok();
    Ok(server)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = start(config).await?;
    stop_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: both stop gracefully, draining the log queue.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                tokio::signal::ctrl_c().await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.ok();
}

async fn demo(mut config: Config, rate: u64, seconds: u64) -> anyhow::Result<()> {
    // The demo's log is throwaway unless a data dir was given: a temporary one,
    // removed when the demo ends.
    let scratch = config.data_dir == Config::defaults().data_dir;
    if scratch {
        config.data_dir =
            std::env::temp_dir().join(format!("shopstream-demo-{}", std::process::id()));
    }
    let data_dir = config.data_dir.clone();
    let server = start(config).await?;
    let (tcp, http) = (server.tcp_addr, server.http_addr);
    println!(
        "demo: streaming ~{rate} events/s of a simulated shop into {tcp} (log in {})",
        data_dir.display()
    );
    println!("try:  curl -s http://{http}/v1/users/u0/profile | python3 -m json.tool");
    println!("      curl -s http://{http}/metrics | grep shopstream_");
    println!("      shopstream query user u1 --addr {http}");
    println!("      curl -s http://{http}/v1/segments | python3 -m json.tool");
    println!(
        "      curl -s 'http://{http}/v1/items/i0/similar?measure=llr' | python3 -m json.tool"
    );
    println!("      curl -s http://{http}/v1/users/u1/recommendations | python3 -m json.tool");
    println!("      curl -s 'http://{http}/v1/items/trending' | python3 -m json.tool");
    println!("      curl -sN http://{http}/v1/stream/segments   # live segment enters and exits");
    let stop =
        Instant::now() + Duration::from_secs(if seconds == 0 { u64::MAX / 4 } else { seconds });
    let feeder = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use std::io::{BufRead, BufReader};
        let stream = std::net::TcpStream::connect(tcp)?;
        let reader = BufReader::new(stream.try_clone()?);
        std::thread::spawn(move || for _ in reader.lines() {});
        let mut out = std::io::BufWriter::new(stream);
        let mut work = DemoWorkload::new(7);
        let mut sent = 0u64;
        let started = Instant::now();
        while Instant::now() < stop {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            for line in work.session(now) {
                writeln!(out, "{line}")?;
                sent += 1;
            }
            let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                out.flush()?;
                std::thread::sleep(wait);
            }
        }
        out.flush()?;
        Ok(())
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    let (mut last_seq, mut last_tick) = (0u64, Instant::now());
    let ctrl_c = stop_signal();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let r = server.engine.readable();
                let rate = (r.seq - last_seq) as f64 / last_tick.elapsed().as_secs_f64();
                (last_seq, last_tick) = (r.seq, Instant::now());
                let digits = shopstream::event::minor_unit_decimals(&server.engine.config.reporting_currency);
                let summary = match shopstream::serve::profile::read(&server.engine, "u0", None).await {
                    Ok(read) => match shopstream::serve::profile::render(&read, &server.engine.symbols, digits) {
                        Some(p) => format!(
                            "u0: {} events, {} orders, revenue {}, 7d views {}, top category {}, rfm {}",
                            p["events_total"], p["orders"], p["revenue"], p["windows"]["7d"]["views"],
                            p["top_categories"][0]["category"], p["rfm"]
                        ),
                        None => "u0: not seen yet".into(),
                    },
                    Err(e) => format!("read failed: {e}"),
                };
                let stages = match shopstream::serve::segments::segment_sizes(&server.engine, None, None).await {
                    Ok((_, sizes)) => {
                        let mut v: Vec<String> = sizes
                            .iter()
                            .filter_map(|(id, n)| {
                                let name = server.engine.catalog().name(shopstream::catalog::segments::KIND, *id)?;
                                name.starts_with("lifecycle:").then(|| format!("{} {n}", &name[10..]))
                            })
                            .collect();
                        v.sort();
                        v.join(", ")
                    }
                    Err(e) => format!("segments: {e}"),
                };
                println!("as_of={} ({rate:.0} events/s, {} behind the log)  {summary}; lifecycle: {stages}",
                    r.seq, server.engine.logged_seq().saturating_sub(r.seq));
                if feeder.is_finished() { break; }
            }
            _ = &mut ctrl_c => break,
        }
    }
    server.shutdown().await;
    if scratch {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

fn gen(
    options: &shopstream_tools::gen::GenOptions,
    out: &std::path::Path,
    binary: bool,
    to: Option<SocketAddr>,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let n = match to {
        Some(addr) => {
            let stream = std::net::TcpStream::connect(addr)
                .with_context(|| format!("connecting to {addr}"))?;
            let reader = stream.try_clone()?;
            let acks = std::thread::spawn(move || {
                use std::io::BufRead;
                std::io::BufReader::new(reader)
                    .lines()
                    .map_while(Result::ok)
                    .last()
            });
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &stream);
            let n = shopstream_tools::gen::write_stream(options, binary, token, &mut w)?;
            drop(w);
            stream.shutdown(std::net::Shutdown::Write)?;
            let last = acks.join().ok().flatten().unwrap_or_default();
            eprintln!("final answer: {last}");
            n
        }
        None if out.as_os_str() == "-" => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            shopstream_tools::gen::write_all(options, binary, &mut w)?
        }
        None => {
            let file = std::fs::File::create(out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            shopstream_tools::gen::write_all(options, binary, &mut w)?
        }
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "generated {n} events in {secs:.3} s = {:.0} events/s",
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting tokio")
    };
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(serve(load(&args)?)),
        Command::Demo {
            rate,
            seconds,
            serve,
        } => runtime()?.block_on(demo(load(&serve)?, rate, seconds)),
        Command::Send {
            file,
            addr,
            binary,
            currency,
            wait_visible,
            token: TokenArg { token },
        } => {
            let ctx = shopstream::event::ParseContext::new(&currency);
            let report = client::send(
                &file,
                addr,
                binary.then_some(&ctx),
                token.as_deref(),
                std::io::stderr().is_terminal(),
            )?;
            for e in &report.errors {
                eprintln!("{e}");
            }
            let secs = report.elapsed.as_secs_f64();
            let n = report.accepted + report.rejected;
            println!(
                "sent {} bytes: accepted {} rejected {} duplicates {} ack seq {} in {:.3} s = {:.0} events/s",
                report.bytes, report.accepted, report.rejected, report.duplicates, report.ack_seq,
                secs, n as f64 / secs.max(1e-9)
            );
            if let Some(http) = wait_visible {
                let extra = client::wait_visible(http, report.ack_seq, token.as_deref())?;
                let total = secs + extra.as_secs_f64();
                println!(
                    "visible after {total:.3} s = {:.0} events/s end to end",
                    n as f64 / total.max(1e-9)
                );
            }
            Ok(())
        }
        Command::Gen {
            options,
            out,
            binary,
            to,
            token: TokenArg { token },
        } => gen(&options, &out, binary, to, token.as_deref()),
        Command::Load { args, json } => {
            let opts = args.options(!json && std::io::stderr().is_terminal())?;
            let report = shopstream_tools::load::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{report}");
            }
            if let Some(why) = report.failure() {
                bail!("load: {why}");
            }
            Ok(())
        }
        Command::Log { what } => {
            let (LogCommand::Check(serve) | LogCommand::Salvage(serve)) = &what;
            let dir = load(serve)?.data_dir;
            let report = shopstream::log::check(&dir)
                .with_context(|| format!("checking the log in {}", dir.display()))?;
            print!("{}", report.render());
            match what {
                LogCommand::Check(_) if report.is_sound() => Ok(()),
                LogCommand::Check(_) => bail!("the log in {} is damaged", dir.display()),
                LogCommand::Salvage(_) if report.is_sound() => {
                    println!("nothing to salvage");
                    Ok(())
                }
                LogCommand::Salvage(_) => {
                    let done = shopstream::log::salvage(&dir)
                        .with_context(|| format!("salvaging the log in {}", dir.display()))?;
                    for (path, len) in &done.quarantined {
                        println!("quarantined {len} bytes to {}", path.display());
                    }
                    for path in &done.rewritten {
                        println!("rewrote {} with its intact records", path.display());
                    }
                    for path in &done.removed {
                        println!("removed {} (no intact record in it)", path.display());
                    }
                    for g in &done.gaps {
                        println!(
                            "lost: epochs {}..{}, events seq {}..{} ({} events)",
                            g.epochs.0,
                            g.epochs.1,
                            g.seqs.0,
                            g.seqs.1,
                            g.events()
                        );
                    }
                    println!("kept {} intact records; the log opens again", done.records);
                    Ok(())
                }
            }
        }
        Command::Snapshot {
            addr,
            token: TokenArg { token },
        } => {
            let (status, body) = client::http_post(addr, "/v1/admin/snapshot", token.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            if status != 201 {
                bail!("HTTP {status}");
            }
            Ok(())
        }
        Command::Auth {
            what: AuthCommand::Hash,
        } => {
            let mut token = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)
                .context("reading the token from stdin")?;
            let token = token
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&token);
            if token.is_empty() {
                bail!("no token on stdin");
            }
            println!("{}", shopstream::auth::digest_hex(token.as_bytes()));
            Ok(())
        }
        Command::Query {
            what: Query::User { id, min_seq },
            addr,
            token: TokenArg { token },
        } => {
            let path = match min_seq {
                Some(s) => format!("/v1/users/{id}/profile?min_seq={s}"),
                None => format!("/v1/users/{id}/profile"),
            };
            let (status, body) = client::http_get_with(addr, &path, token.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            if status != 200 {
                bail!("HTTP {status}");
            }
            Ok(())
        }
    }
}
