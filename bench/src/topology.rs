//! `--topology` values: which local topologies the topology runner starts, one after another
//! (`agg:1,agg:2,agg:4`: aggregated workers, 1, 2 then 4 of them).

use crate::Error;

/// How the workers of a topology serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyKind {
    /// Each worker does prefill and decode.
    Aggregated,
}

/// One topology to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologySpec {
    pub kind: TopologyKind,
    pub workers: usize,
    /// As given, e.g. `agg:2` (labels its results).
    pub name: String,
}

/// Parses a comma list such as `agg:1,agg:2` (`agg` alone is `agg:1`).
pub fn parse_list(list: &str) -> Result<Vec<TopologySpec>, Error> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (kind, count) = item.split_once(':').unwrap_or((item, "1"));
        let kind = match kind {
            "agg" => TopologyKind::Aggregated,
            _ => {
                return Err(Error::Config(format!(
                    "--topology {item:?}: unknown kind {kind:?}; known: agg:N (N aggregated \
                     mocker workers)"
                )));
            }
        };
        let workers = count.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error::Config(format!("--topology {item:?}: the worker count must be a number >= 1"))
        })?;
        out.push(TopologySpec { kind, workers, name: format!("agg:{workers}") });
    }
    if out.is_empty() {
        return Err(Error::Config("--topology is empty".into()));
    }
    Ok(out)
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
    }
}
