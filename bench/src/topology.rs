//! `--topology` values: which local topologies the topology runner starts, one after another
//! (`agg:1,agg:2,agg:4`: aggregated workers, 1, 2 then 4 of them; `1p1d,2p2d,1p3d`: prefill
//! and decode workers, split).

use crate::Error;

/// How the workers of a topology serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyKind {
    /// Each worker does prefill and decode.
    Aggregated,
    /// Prefill workers compute prompts and hand their KV to decode workers.
    Disaggregated { prefill: usize, decode: usize },
}

/// One topology to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologySpec {
    pub kind: TopologyKind,
    /// Workers in all.
    pub workers: usize,
    /// As given, e.g. `agg:2` or `1p3d` (labels its results).
    pub name: String,
}

impl TopologySpec {
    /// The `switchyard up` flags that start this topology's workers.
    pub fn up_flags(&self) -> Vec<String> {
        match self.kind {
            TopologyKind::Aggregated => vec!["--workers".into(), self.workers.to_string()],
            TopologyKind::Disaggregated { prefill, decode } => vec![
                "--prefill-workers".into(),
                prefill.to_string(),
                "--decode-workers".into(),
                decode.to_string(),
            ],
        }
    }
}

/// Parses a comma list such as `agg:1,agg:2,1p1d,2p2d` (`agg` alone is `agg:1`).
pub fn parse_list(list: &str) -> Result<Vec<TopologySpec>, Error> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        out.push(parse_one(item)?);
    }
    if out.is_empty() {
        return Err(Error::Config("--topology is empty".into()));
    }
    Ok(out)
}

fn parse_one(item: &str) -> Result<TopologySpec, Error> {
    let count = |text: &str, what: &str| {
        text.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error::Config(format!("--topology {item:?}: the {what} count must be a number >= 1"))
        })
    };
    if let Some(split) = item.strip_suffix('d')
        && let Some((prefill, decode)) = split.split_once('p')
        && !prefill.is_empty()
        && prefill.bytes().all(|b| b.is_ascii_digit())
    {
        let (prefill, decode) =
            (count(prefill, "prefill worker")?, count(decode, "decode worker")?);
        return Ok(TopologySpec {
            kind: TopologyKind::Disaggregated { prefill, decode },
            workers: prefill + decode,
            name: format!("{prefill}p{decode}d"),
        });
    }
    let (kind, workers) = item.split_once(':').unwrap_or((item, "1"));
    if kind != "agg" {
        return Err(Error::Config(format!(
            "--topology {item:?}: unknown kind {kind:?}; known: agg:N (N aggregated mocker \
             workers), XpYd (X prefill and Y decode workers, e.g. 1p1d)"
        )));
    }
    let workers = count(workers, "worker")?;
    Ok(TopologySpec { kind: TopologyKind::Aggregated, workers, name: format!("agg:{workers}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_bad_items_are_named() {
        let t = parse_list("agg:1, agg:4,agg").unwrap();
        assert_eq!(t.iter().map(|t| t.workers).collect::<Vec<_>>(), [1, 4, 1]);
        assert_eq!(t[1].name, "agg:4");
        assert!(parse_list("disagg:1p1d").unwrap_err().to_string().contains("disagg"));
        assert!(parse_list("agg:0").is_err());
        assert!(parse_list("").is_err());
        let t = parse_list("agg:4,2p2d,1p3d,3p1d,12p4d").unwrap();
        assert_eq!(t[1].kind, TopologyKind::Disaggregated { prefill: 2, decode: 2 });
        assert_eq!((t[2].name.as_str(), t[2].workers), ("1p3d", 4));
        assert_eq!(t[4].kind, TopologyKind::Disaggregated { prefill: 12, decode: 4 });
        assert_eq!(t[2].up_flags(), ["--prefill-workers", "1", "--decode-workers", "3"]);
        assert!(parse_list("0p1d").is_err());
        assert!(parse_list("1p0d").is_err());
        assert!(parse_list("pd").is_err());
    }
}
