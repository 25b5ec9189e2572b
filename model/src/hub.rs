//! Finding models in the local Hugging Face hub cache (read-only; nothing is downloaded).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The local Hugging Face hub cache directory, as `huggingface_hub` computes it:
/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`. `None` only when none of those variables nor `$HOME` is set.
/// The directory need not exist.
pub fn hf_hub_dir() -> Option<PathBuf> {
    hub_dir_from(|name| std::env::var_os(name))
}

/// [`hf_hub_dir`] over any environment lookup; empty values count as unset.
pub(crate) fn hub_dir_from(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let get = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = get("HF_HUB_CACHE").or_else(|| get("HUGGINGFACE_HUB_CACHE")) {
        return Some(dir);
    }
    if let Some(home) = get("HF_HOME") {
        return Some(home.join("hub"));
    }
    if let Some(cache) = get("XDG_CACHE_HOME") {
        return Some(cache.join("huggingface").join("hub"));
    }
    get("HOME").map(|home| home.join(".cache").join("huggingface").join("hub"))
}

/// Whether `source` has the shape of a hub repo id (`NAME` or `ORG/NAME`), as opposed to a
/// path such as `./model` or `/models/x`.
pub(crate) fn looks_like_repo_id(source: &str) -> bool {
    let parts: Vec<&str> = source.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && !p.starts_with('~')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// The snapshot directory of `repo_id` in `hub_dir`: the revision `refs/main` names when that
/// snapshot exists, else the newest snapshot (preferring ones that hold `tokenizer.json`).
/// On failure returns the repo's cache directory, to name in the error.
pub(crate) fn snapshot_dir(hub_dir: &Path, repo_id: &str) -> Result<PathBuf, PathBuf> {
    let repo_dir = hub_dir.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshots = repo_dir.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo_dir.join("refs").join("main")) {
        let rev = rev.trim();
        if !rev.is_empty() && !rev.contains('/') {
            let dir = snapshots.join(rev);
            if dir.is_dir() {
                return Ok(dir);
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(&snapshots) else {
        return Err(repo_dir);
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .max_by_key(|p| {
            let has_tokenizer = p.join("tokenizer.json").exists();
            let modified =
                std::fs::metadata(p).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            (has_tokenizer, modified, p.clone())
        })
        .ok_or(repo_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_dir_follows_huggingface_hub_precedence() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
        };
        assert_eq!(
            hub_dir_from(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/huggingface/hub"))
        );
        assert_eq!(
            hub_dir_from(env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")])),
            Some(PathBuf::from("/x/huggingface/hub"))
        );
        assert_eq!(
            hub_dir_from(env(&[("XDG_CACHE_HOME", "/x"), ("HF_HOME", "/hf")])),
            Some(PathBuf::from("/hf/hub"))
        );
        assert_eq!(
            hub_dir_from(env(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")])),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            hub_dir_from(env(&[("HF_HOME", ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/huggingface/hub"))
        );
        assert_eq!(hub_dir_from(env(&[])), None);
    }

    #[test]
    fn repo_id_shapes() {
        for ok in ["Qwen/Qwen3-0.6B", "gpt2", "meta-llama/Llama-3.1-8B_x"] {
            assert!(looks_like_repo_id(ok), "{ok}");
        }
        for bad in ["./m", "/abs/path", "a/b/c", "../x", "~/m", "a//b", "", "a b/c"] {
            assert!(!looks_like_repo_id(bad), "{bad}");
        }
    }
}
