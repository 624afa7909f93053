//! Key names of the Redis engine. Every key of a round carries the hash tag
//! `{<round id>}`, so one round's keys share a Cluster slot and its scripts
//! run unchanged on Redis Cluster.

/// The rounds set up and not yet retired (not per round, so no hash tag):
/// what the order writer reads streams from.
pub const ROUNDS: &str = "dg:rounds";

/// The consumer group of the order writers on every round's stream.
pub const WRITERS_GROUP: &str = "order-writers";

pub struct RoundKeys {
    pub stock: String,
    pub held: String,
    pub keys: String,
    pub orders: String,
    pub live: String,
    pub winners: String,
    /// Wins in `winners` not yet acknowledged by the order writer (one
    /// entry holds every win of a script call): the writer's lag in wins.
    pub unstored: String,
    /// Ids of orders whose units came back (`release.lua`), so a
    /// reconciliation running at the same time does not put them back.
    pub ended: String,
    /// Restock ids applied, so a retried restock adds nothing.
    pub restocks: String,
    /// Winner entries the order writer could not store (unreadable, or
    /// colliding with a stored order): kept here, never deleted.
    pub dead: String,
    /// Wins voided by a reconciliation because another server sold their
    /// units meanwhile (`reconcile.lua`): the writer keeps them as dead
    /// letters instead of storing them.
    pub voided: String,
    /// The waiting room: entries (user -> draw score or arrival number),
    /// its figures, admission times, and the tickets still holding units.
    pub queue_entries: String,
    pub queue_state: String,
    pub queue_admits: String,
    pub queue_pending: String,
    /// The `run_id` of the Redis server under which the round was last
    /// reconciled with the order store: a server holding the round whose
    /// `run_id` differs may know less than the store.
    pub reconciled_under: String,
}

impl RoundKeys {
    /// Every key of the round but the dead letters (which are kept until an
    /// operator has dealt with them): what retiring the round removes.
    pub fn retired(&self) -> [&str; 15] {
        [
            &self.stock,
            &self.held,
            &self.keys,
            &self.orders,
            &self.live,
            &self.winners,
            &self.unstored,
            &self.ended,
            &self.restocks,
            &self.queue_entries,
            &self.queue_state,
            &self.queue_admits,
            &self.queue_pending,
            &self.reconciled_under,
            &self.voided,
        ]
    }

    pub fn new(round_id: &str) -> Self {
        let key = |name: &str| format!("dg:{{{round_id}}}:{name}");
        Self {
            stock: key("stock"),
            held: key("held"),
            keys: key("keys"),
            orders: key("orders"),
            live: key("live"),
            winners: key("winners"),
            unstored: key("unstored"),
            ended: key("ended"),
            restocks: key("restocks"),
            dead: key("dead"),
            voided: key("voided"),
            queue_entries: key("queue:entries"),
            queue_state: key("queue:state"),
            queue_admits: key("queue:admits"),
            queue_pending: key("queue:pending"),
            reconciled_under: key("reconciled_under"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_round_carries_its_hash_tag() {
        let keys = RoundKeys::new("mi@20261127T020000Z");
        for key in [
            &keys.stock,
            &keys.held,
            &keys.keys,
            &keys.orders,
            &keys.live,
            &keys.winners,
            &keys.unstored,
            &keys.ended,
            &keys.restocks,
            &keys.dead,
            &keys.queue_entries,
            &keys.queue_state,
            &keys.queue_admits,
            &keys.queue_pending,
            &keys.reconciled_under,
            &keys.voided,
        ] {
            assert!(key.contains("{mi@20261127T020000Z}"), "{key}");
        }
    }
}
