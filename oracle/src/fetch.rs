//! `oracle fetch`: a model downloaded from the network by its content id,
//! from every peer that offers it, verified piece by piece, resumable.

use std::path::PathBuf;

use anyhow::{Context, bail};
use libp2p::Multiaddr;
use shared_proto::ContentId;

use crate::p2p::identity;
use crate::serve::default_data_dir;
use crate::weights::fetch::{self, Destination, FetchConfig};

/// `oracle fetch`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FetchArgs {
    /// The model's content id (what `oracle manifest` prints last).
    pub model_cid: String,
    /// A peer to start from, ending in `/p2p/<peer id>`; repeatable. More
    /// providers are found in the DHT.
    #[arg(long, required = true)]
    pub bootstrap: Vec<String>,
    /// Where the model goes. A partial download sits beside it as
    /// `OUT.part` until every piece is verified; run again to resume.
    #[arg(long)]
    pub out: PathBuf,
    /// At most this many bytes a second, e.g. `20M` or `512K` [default: no cap].
    #[arg(long, value_parser = parse_rate)]
    pub max_rate: Option<u64>,
    /// Requests in flight to one peer at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub per_peer: u32,
    /// Seconds a piece may take before it is asked again (of another peer
    /// when there is one).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub piece_timeout_s: u64,
    /// Give up after this many seconds without a verified piece (longer when
    /// --max-rate makes one piece take longer).
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout_s: u64,
    /// Where the key and the ledger of peers (who sent bad pieces) live
    /// [default: the oracle's data dir + /fetch].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also write what happened (each peer's part, each piece's source) as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// `20M`, `512K`, `1G`, `1000` (bytes a second; K, M, G are powers of 1024;
/// `B`, `iB` and `/s` may follow).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, scale) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ if t[..i].trim().parse::<f64>().is_ok() => {
                    return Err(format!("`{text}`: unknown unit {c:?} (use K, M or G)"));
                }
                _ => return Err(format!("`{text}` is not a rate like 20M or 512K")),
            };
            (&t[..i], scale)
        }
        _ => (t, 1),
    };
    let n: f64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a rate like 20M or 512K"))?;
    let rate = n * scale as f64;
    if !rate.is_finite() || !(1024.0..=1e15).contains(&rate) {
        return Err(format!(
            "`{text}`: the rate must be between 1K and 1e15 bytes a second"
        ));
    }
    Ok(rate as u64)
}

/// Downloads the model and prints where it went.
pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let model: ContentId = args
        .model_cid
        .parse()
        .with_context(|| format!("`{}` is not a model content id", args.model_cid))?;
    let bootstrap = args
        .bootstrap
        .iter()
        .map(|s| {
            s.parse::<Multiaddr>()
                .with_context(|| format!("--bootstrap `{s}` is not a multiaddr"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.out.is_dir() {
        bail!("--out {} is a directory: name the file", args.out.display());
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| default_data_dir().join("fetch"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let key = identity::load_or_create_key(&data_dir)?;
    let mut config = FetchConfig::new(
        Some(model),
        bootstrap,
        Destination::File(args.out.clone()),
        data_dir,
    );
    config.max_rate = args.max_rate;
    config.picker.max_in_flight = args.per_peer as usize;
    config.timeouts.piece = std::time::Duration::from_secs(args.piece_timeout_s);
    config.stall_timeout = std::time::Duration::from_secs(args.stall_timeout_s);
    let report = fetch::fetch_until_signal(config, key)?;
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    for p in &report.peers {
        eprintln!(
            "peer {}: {} pieces, {} bad, {} failed; reputation {:.2} -> {:.2}{}",
            p.peer_id,
            p.pieces,
            p.bad_pieces,
            p.failures,
            p.reputation_before,
            p.reputation_after,
            if p.struck_off { " (dropped)" } else { "" }
        );
    }
    let rate = if report.seconds > 0.0 {
        report.bytes as f64 * f64::from(report.fetched)
            / f64::from(report.pieces.max(1))
            / report.seconds
            / (1024.0 * 1024.0)
    } else {
        0.0
    };
    eprintln!(
        "fetched {} pieces ({} were on disk already) in {:.1} s, {rate:.1} MiB/s; every piece and the whole file verified",
        report.fetched, report.resumed, report.seconds
    );
    println!("{}", report.path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!(parse_rate("20M"), Ok(20 << 20));
        assert_eq!(parse_rate("512KiB/s"), Ok(512 << 10));
        assert_eq!(parse_rate("1.5G"), Ok(3 << 29));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("12").is_err());
        assert!(parse_rate("fast").unwrap_err().contains("is not a rate"));
        assert!(parse_rate("3X").unwrap_err().contains("unknown unit"));
        assert!(parse_rate("-5M").is_err());
        assert!(parse_rate("").is_err());
    }
}
