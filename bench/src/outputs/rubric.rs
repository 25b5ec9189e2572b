//! A rubric: criteria with weights, read from YAML (or JSON). The automatic ones are scored on
//! every output — a regex, text it must (or must not) contain, valid JSON, a JSON schema, a
//! length in tokens or characters, a latency — and the judgment ones are left as columns for a
//! person to fill. An output's score is the weighted share of automatic criteria it meets.
//!
//! ```yaml
//! criteria:
//!   - {name: answers in JSON, kind: valid_json, weight: 2}
//!   - {name: has a total, kind: json_schema, schema: {type: object, required: [total]}}
//!   - {name: no apology, kind: regex, pattern: "(?i)sorry", expect: false}
//!   - {name: mentions the price, kind: contains, text: "$"}
//!   - {name: short, kind: length, max_tokens: 200}
//!   - {name: fast, kind: latency, max_ms: 2000}
//!   - {name: helpful, kind: judgment, weight: 3}
//! ```

use std::path::Path;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::SavedOutput;
use crate::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RubricFile {
    criteria: Vec<CriterionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CriterionSpec {
    name: String,
    kind: String,
    #[serde(default = "one")]
    weight: f64,
    /// `regex`: the pattern; `contains`/`not_contains`: the text (`text` also accepted).
    pattern: Option<String>,
    text: Option<String>,
    #[serde(default)]
    case_insensitive: bool,
    /// `regex`: false scores outputs that do *not* match.
    #[serde(default = "yes")]
    expect: bool,
    /// `json_schema`: the schema inline, or a file beside the rubric.
    schema: Option<Value>,
    schema_file: Option<String>,
    min_tokens: Option<usize>,
    max_tokens: Option<usize>,
    min_chars: Option<usize>,
    max_chars: Option<usize>,
    /// `latency`: the bound, on `e2e` (default) or `ttft`.
    max_ms: Option<f64>,
    #[serde(default)]
    metric: Option<String>,
    /// `judgment`: what the person filling the column looks for.
    #[allow(dead_code)]
    description: Option<String>,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

/// How one criterion is checked.
enum Check {
    Regex {
        regex: Regex,
        expect: bool,
    },
    Contains {
        text: String,
        present: bool,
        case_insensitive: bool,
    },
    ValidJson,
    Schema(Box<jsonschema::Validator>),
    Length {
        min_tokens: Option<usize>,
        max_tokens: Option<usize>,
        min_chars: Option<usize>,
        max_chars: Option<usize>,
    },
    Latency {
        max_ms: f64,
        ttft: bool,
    },
    Judgment,
}

/// One criterion of a rubric.
pub struct Criterion {
    pub name: String,
    pub weight: f64,
    check: Check,
}

impl std::fmt::Debug for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Criterion").field("name", &self.name).field("weight", &self.weight).finish()
    }
}

impl Criterion {
    /// Whether a person scores it (a column left blank).
    pub fn is_judgment(&self) -> bool {
        matches!(self.check, Check::Judgment)
    }

    /// Whether `output` meets it; `None` for judgment criteria.
    pub fn check(&self, output: &SavedOutput) -> Option<bool> {
        let text = output.output.as_str();
        Some(match &self.check {
            Check::Regex { regex, expect } => regex.is_match(text) == *expect,
            Check::Contains { text: needle, present, case_insensitive } => {
                let found = if *case_insensitive {
                    text.to_lowercase().contains(&needle.to_lowercase())
                } else {
                    text.contains(needle.as_str())
                };
                found == *present
            }
            Check::ValidJson => serde_json::from_str::<Value>(json_body(text)).is_ok(),
            Check::Schema(validator) => {
                serde_json::from_str::<Value>(json_body(text)).is_ok_and(|v| validator.is_valid(&v))
            }
            Check::Length { min_tokens, max_tokens, min_chars, max_chars } => {
                let (tokens, chars) = (output.output_tokens, text.chars().count());
                min_tokens.is_none_or(|m| tokens >= m)
                    && max_tokens.is_none_or(|m| tokens <= m)
                    && min_chars.is_none_or(|m| chars >= m)
                    && max_chars.is_none_or(|m| chars <= m)
            }
            Check::Latency { max_ms, ttft } => {
                let value = if *ttft { output.ttft_ms } else { Some(output.e2e_ms) };
                output.error.is_none() && value.is_some_and(|v| v <= *max_ms)
            }
            Check::Judgment => return None,
        })
    }
}

/// JSON answers often come fenced (```json … ```): the body inside the fence.
fn json_body(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else { return t };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// A loaded rubric.
#[derive(Debug)]
pub struct Rubric {
    pub criteria: Vec<Criterion>,
}

impl Rubric {
    /// Reads a rubric file (YAML, of which JSON is a subset).
    pub fn load(path: &Path) -> Result<Rubric, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Rubric::parse(&text, path.parent())
    }

    /// Parses rubric text; `schema_file`s are read relative to `dir`.
    pub fn parse(text: &str, dir: Option<&Path>) -> Result<Rubric, Error> {
        let bad = |m: String| Error::Config(format!("rubric: {m}"));
        let file: RubricFile = serde_yaml_ng::from_str(text).map_err(|e| bad(e.to_string()))?;
        if file.criteria.is_empty() {
            return Err(bad("no criteria".into()));
        }
        let mut criteria = Vec::new();
        for spec in file.criteria {
            let name = spec.name.clone();
            let at = |m: &str| bad(format!("criterion {name:?}: {m}"));
            if !(spec.weight >= 0.0 && spec.weight.is_finite()) {
                return Err(at("weight must be a number >= 0"));
            }
            let check = match spec.kind.as_str() {
                "regex" => {
                    let pattern = spec.pattern.as_deref().ok_or_else(|| at("needs `pattern`"))?;
                    let regex = regex::RegexBuilder::new(pattern)
                        .case_insensitive(spec.case_insensitive)
                        .build()
                        .map_err(|e| at(&e.to_string()))?;
                    Check::Regex { regex, expect: spec.expect }
                }
                kind @ ("contains" | "not_contains") => Check::Contains {
                    text: spec.text.or(spec.pattern).ok_or_else(|| at("needs `text`"))?,
                    present: kind == "contains",
                    case_insensitive: spec.case_insensitive,
                },
                "valid_json" => Check::ValidJson,
                "json_schema" => {
                    let schema = match (spec.schema, spec.schema_file) {
                        (Some(schema), None) => schema,
                        (None, Some(file)) => {
                            let path = dir.unwrap_or(Path::new(".")).join(file);
                            let text =
                                std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                            serde_json::from_str(&text).map_err(|e| at(&e.to_string()))?
                        }
                        _ => return Err(at("needs one of `schema` or `schema_file`")),
                    };
                    let validator =
                        jsonschema::validator_for(&schema).map_err(|e| at(&e.to_string()))?;
                    Check::Schema(Box::new(validator))
                }
                "length" => {
                    if spec
                        .min_tokens
                        .or(spec.max_tokens)
                        .or(spec.min_chars)
                        .or(spec.max_chars)
                        .is_none()
                    {
                        return Err(at("needs min_tokens, max_tokens, min_chars or max_chars"));
                    }
                    Check::Length {
                        min_tokens: spec.min_tokens,
                        max_tokens: spec.max_tokens,
                        min_chars: spec.min_chars,
                        max_chars: spec.max_chars,
                    }
                }
                "latency" => Check::Latency {
                    max_ms: spec.max_ms.ok_or_else(|| at("needs `max_ms`"))?,
                    ttft: match spec.metric.as_deref() {
                        None | Some("e2e") => false,
                        Some("ttft") => true,
                        Some(other) => return Err(at(&format!("metric {other:?}: e2e or ttft"))),
                    },
                },
                "judgment" => Check::Judgment,
                other => {
                    return Err(at(&format!(
                        "unknown kind {other:?}; known: regex, contains, not_contains, \
                         valid_json, json_schema, length, latency, judgment"
                    )));
                }
            };
            criteria.push(Criterion { name: spec.name, weight: spec.weight, check });
        }
        Ok(Rubric { criteria })
    }

    /// The automatic score of one output: weighted share of the automatic criteria met, in
    /// [0, 1]; `None` when the rubric has no automatic criterion with weight.
    pub fn score(&self, output: &SavedOutput) -> Option<f64> {
        let (mut met, mut total) = (0.0, 0.0);
        for c in &self.criteria {
            if let Some(ok) = c.check(output) {
                total += c.weight;
                if ok {
                    met += c.weight;
                }
            }
        }
        (total > 0.0).then(|| met / total)
    }

    /// The mean automatic score of a run's outputs.
    pub fn run_score(&self, outputs: &[SavedOutput]) -> Option<f64> {
        let scores: Vec<f64> = outputs.iter().filter_map(|o| self.score(o)).collect();
        (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(text: &str, tokens: usize, e2e_ms: f64) -> SavedOutput {
        SavedOutput {
            prompt: "p".into(),
            output: text.into(),
            output_tokens: tokens,
            max_tokens: 100,
            ttft_ms: Some(e2e_ms / 2.0),
            e2e_ms,
            error: None,
        }
    }

    #[test]
    fn automatic_criteria_score_and_judgment_is_left_open() {
        let rubric = Rubric::parse(
            r#"
criteria:
  - {name: json, kind: valid_json, weight: 2}
  - {name: schema, kind: json_schema, schema: {type: object, required: [total]}}
  - {name: no sorry, kind: regex, pattern: "sorry", case_insensitive: true, expect: false}
  - {name: dollar, kind: contains, text: "$"}
  - {name: short, kind: length, max_tokens: 10}
  - {name: fast, kind: latency, max_ms: 100}
  - {name: helpful, kind: judgment, weight: 5}
"#,
            None,
        )
        .unwrap();
        assert_eq!(rubric.criteria.len(), 7);
        assert!(rubric.criteria[6].is_judgment());
        let good = output("```json\n{\"total\": \"$3\"}\n```", 8, 50.0);
        assert_eq!(rubric.score(&good), Some(1.0));
        // Not JSON (json 2 + schema 1 lost), says sorry (1 lost), has $, 12 tokens (1 lost),
        // slow (1 lost): 1 of 7.
        let bad = output("Sorry, $5", 12, 500.0);
        let s = rubric.score(&bad).unwrap();
        assert!((s - 1.0 / 7.0).abs() < 1e-12, "{s}");
        assert_eq!(rubric.criteria[6].check(&bad), None);
        assert!((rubric.run_score(&[good, bad]).unwrap() - 4.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn bad_rubrics_are_refused_by_name() {
        let e = Rubric::parse("criteria: [{name: x, kind: nope}]", None).unwrap_err().to_string();
        assert!(e.contains("\"x\"") && e.contains("unknown kind"), "{e}");
        let e = Rubric::parse("criteria: [{name: r, kind: regex}]", None).unwrap_err();
        assert!(e.to_string().contains("pattern"), "{e}");
        assert!(Rubric::parse("criteria: []", None).is_err());
        assert!(Rubric::parse("criteria: [{name: l, kind: length}]", None).is_err());
    }
}
