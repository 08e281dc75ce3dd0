//! Which Redis server (and which replication history) the cache talks to.
//! Replication is asynchronous: a failover to a replica that had not caught
//! up, or a restart from an older snapshot, loses writes Redis had
//! acknowledged. Both show as a new identity: `run_id` changes with every
//! server process, `master_replid` with every promotion or full resync.

use super::{Cache, CacheError};

/// A Redis server's identity: its process and its replication history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdentity {
    /// `run_id` of `INFO server`: new for every server process.
    pub run_id: String,
    /// `master_replid` of `INFO replication`: new when a replica is promoted
    /// or a server resyncs from another master.
    pub master_replid: String,
}

impl Cache {
    /// The identity of the server behind the cache's connection (two `INFO`
    /// sections, each within the request path's timeout; not through the breaker:
    /// not for the request path). In a cluster, of every master: a failover
    /// or a master's restart changes it. `Ok(None)` when a server does not
    /// report them (a proxy that hides `INFO`).
    pub async fn identity(&self) -> Result<Option<ServerIdentity>, CacheError> {
        let mut conn = self.link.clone();
        let server: redis::Value = self
            .bounded(redis::cmd("INFO").arg("server").query_async(&mut conn))
            .await?;
        let replication: redis::Value = self
            .bounded(redis::cmd("INFO").arg("replication").query_async(&mut conn))
            .await?;
        let (server, replication) = (per_node(server)?, per_node(replication)?);
        if server.len() == 1 && replication.len() == 1 && server[0].0.is_empty() {
            return Ok(parse(&server[0].1, &replication[0].1));
        }
        // A cluster: each master's identity, by address.
        let mut run_ids = Vec::new();
        let mut histories = Vec::new();
        for (address, text) in &server {
            let Some((_, other)) = replication.iter().find(|(a, _)| a == address) else {
                return Ok(None);
            };
            let Some(one) = parse(text, other) else {
                return Ok(None);
            };
            run_ids.push(format!("{address}={}", one.run_id));
            histories.push(format!("{address}={}", one.master_replid));
        }
        Ok(Some(ServerIdentity {
            run_id: run_ids.join(","),
            master_replid: histories.join(","),
        }))
    }
}

/// An `INFO` answer as `(address, text)` per node, sorted: one with an empty
/// address from one server, one per master from a cluster.
fn per_node(value: redis::Value) -> Result<Vec<(String, String)>, CacheError> {
    let text = |v: &redis::Value| -> Result<String, CacheError> {
        redis::FromRedisValue::from_redis_value(v.clone())
            .map_err(|e| CacheError::Redis(redis::RedisError::from(e)))
    };
    let mut nodes = match value {
        redis::Value::Map(pairs) => pairs
            .iter()
            .map(|(address, info)| Ok((text(address)?, text(info)?)))
            .collect::<Result<Vec<_>, CacheError>>()?,
        other => vec![(String::new(), text(&other)?)],
    };
    nodes.sort();
    Ok(nodes)
}

/// The identity in `INFO server` and `INFO replication` texts.
fn parse(server: &str, replication: &str) -> Option<ServerIdentity> {
    let field = |text: &str, name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name && !value.trim().is_empty()).then(|| value.trim().to_owned())
        })
    };
    Some(ServerIdentity {
        run_id: field(server, "run_id")?,
        master_replid: field(replication, "master_replid")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_read_from_both_sections() {
        let server = "# Server\r\nredis_version:7.0.15\r\nrun_id:4f1c\r\ntcp_port:6379\r\n";
        let replication =
            "# Replication\r\nrole:master\r\nmaster_replid:9ab0\r\nmaster_replid2:0000\r\n";
        assert_eq!(
            parse(server, replication),
            Some(ServerIdentity {
                run_id: "4f1c".into(),
                master_replid: "9ab0".into(),
            })
        );
    }

    #[test]
    fn a_server_that_hides_either_field_has_no_identity() {
        assert_eq!(parse("run_id:4f1c\r\n", "role:master\r\n"), None);
        assert_eq!(parse("redis_version:7\r\n", "master_replid:9ab0\r\n"), None);
        assert_eq!(parse("run_id:\r\n", "master_replid:9ab0\r\n"), None);
    }
}
