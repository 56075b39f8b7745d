//! The shim's command line, in containerd's Go flag syntax:
//! `-namespace NS -address ADDR -publish-binary BIN -id ID [-bundle B] [-debug] ACTION`.

/// Parsed flags and action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    /// containerd namespace.
    pub namespace: String,
    /// containerd's gRPC socket.
    pub address: String,
    /// containerd binary (for publishing; unused, events go over ttrpc).
    pub publish_binary: String,
    /// Task id.
    pub id: String,
    /// Bundle path (delete).
    pub bundle: String,
    /// Debug logging.
    pub debug: bool,
    /// Print the version and exit.
    pub version: bool,
    /// `start`, `delete`, or `serve` (the long-running server).
    pub action: String,
}

/// Parses Go-style flags (`-flag value`, `-flag=value`, `--flag`).
pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if !a.action.is_empty() {
                return Err(format!(
                    "unexpected argument {arg:?} after action {:?}",
                    a.action
                ));
            }
            a.action = arg;
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("flag -{name} needs a value"))
        };
        match name {
            "namespace" => a.namespace = value(name)?,
            "address" => a.address = value(name)?,
            "publish-binary" => a.publish_binary = value(name)?,
            "id" => a.id = value(name)?,
            "bundle" => a.bundle = value(name)?,
            "socket" => {
                value(name)?;
            }
            "debug" => a.debug = inline.as_deref() != Some("false"),
            "v" | "version" => a.version = true,
            other => return Err(format!("unknown flag -{other}")),
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(str::to_string))
    }

    #[test]
    fn containerd_start_and_delete_lines() {
        let a = p("-namespace default -address /run/containerd/containerd.sock -publish-binary /usr/bin/containerd -id t1 -debug start").unwrap();
        assert_eq!(
            (
                a.namespace.as_str(),
                a.id.as_str(),
                a.action.as_str(),
                a.debug
            ),
            ("default", "t1", "start", true)
        );
        let a = p("-namespace=k8s.io -address=/x -id=c -bundle=/b delete").unwrap();
        assert_eq!(
            (a.namespace.as_str(), a.bundle.as_str(), a.action.as_str()),
            ("k8s.io", "/b", "delete")
        );
    }

    #[test]
    fn bad_flags() {
        assert!(p("-nope start").unwrap_err().contains("unknown flag -nope"));
        assert!(p("-id").unwrap_err().contains("needs a value"));
        assert!(p("start delete").is_err());
    }
}
