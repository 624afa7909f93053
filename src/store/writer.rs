//! The group-commit writer, one design for both databases: one writer owns
//! the write connection and commits whatever jobs have queued up in one
//! transaction, so many reservations share one fsync. All the batch's new
//! orders go in one insert; every other job runs in a savepoint of its own,
//! so one failing change cannot sink the others. Each job learns its result
//! only after the commit.
//!
//! SQLite runs the loop on a thread of its own (`sqlite.rs`), PostgreSQL on
//! a task (`postgres.rs`); both hand each batch to [`run_batch`].

use std::collections::HashSet;

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};

use super::address_rows::{self, AddOutcome};
use super::after_sale_rows::{self, AfterSaleOutcome};
use super::coupon_rows::{self, ClaimOutcome};
use super::event_rows::{self, Recorded};
use super::intent_rows::{self, IntentOutcome, IntentRequest};
use super::orders::{self, EditOutcome};
use super::sql::Sql;
use super::webhook_rows::{self, Deliveries};
use super::{promotion_rows, CancelOutcome, Keyed, PayOutcome, RestockRecord, StoreError};
use crate::address::Address;
use crate::after_sale;
use crate::coupons::Batch;
use crate::domain::{OrderId, UserId};
use crate::events::NewEvent;
use crate::order::Order;
use crate::payment::PaymentNotice;
use crate::shipping::ShipPlan;

/// Jobs committed together at most; bounds the latency one commit adds.
pub(crate) const MAX_BATCH: usize = 2048;
/// Jobs that may wait for the writer; a full queue makes callers wait for a
/// slot (backpressure) before they decide anything.
const QUEUE_DEPTH: usize = 64 * 1024;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;
/// Runs once an order's commit is known, whether or not anyone awaits it.
pub(crate) type Settle = Box<dyn FnOnce(&Result<(), StoreError>) + Send + Sync>;

/// A unit of work for the writer, with where its result goes.
pub(crate) enum Job {
    Insert {
        orders: Vec<Keyed>,
        /// Each order's `order.created` event, in the same order.
        created: Vec<NewEvent>,
        /// Set for one reservation of the embedded engine: there, an order
        /// not stored (a collision) is a failure.
        settle: Option<Settle>,
        /// The ids not stored because they collide with another stored order.
        reply: Reply<Vec<OrderId>>,
    },
    Cancel {
        id: OrderId,
        user: UserId,
        now: Timestamp,
        reply: Reply<CancelOutcome>,
    },
    Pay {
        notice: PaymentNotice,
        shipping: ShipPlan,
        now: Timestamp,
        reply: Reply<PayOutcome>,
    },
    AfterSale {
        id: OrderId,
        /// The shopper asking; None for operators, carrier and gateway.
        user: Option<UserId>,
        request: after_sale::Request,
        shipping: ShipPlan,
        now: Timestamp,
        reply: Reply<AfterSaleOutcome>,
    },
    Expire {
        now: Timestamp,
        max: usize,
        reply: Reply<Vec<Order>>,
    },
    MarkReleased {
        ids: Vec<OrderId>,
        reply: Reply<()>,
    },
    AddRestock {
        record: RestockRecord,
        now: Timestamp,
        reply: Reply<bool>,
    },
    SaveDrop {
        id: String,
        definition: String,
        now: Timestamp,
        reply: Reply<bool>,
    },
    SavePromotion {
        id: String,
        definition: String,
        now: Timestamp,
        reply: Reply<bool>,
    },
    EndPromotion {
        id: String,
        now: Timestamp,
        reply: Reply<bool>,
    },
    AddAddress {
        user: UserId,
        address: Address,
        reply: Reply<AddOutcome>,
    },
    DeleteAddress {
        user: UserId,
        id: String,
        reply: Reply<bool>,
    },
    SetOrderAddress {
        id: OrderId,
        user: UserId,
        address_id: String,
        reply: Reply<EditOutcome>,
    },
    PayIntent {
        id: OrderId,
        user: UserId,
        request: IntentRequest,
        now: Timestamp,
        reply: Reply<IntentOutcome>,
    },
    SaveCouponBatch {
        batch: Batch,
        definition: String,
        now: Timestamp,
        reply: Reply<bool>,
    },
    ClaimCoupon {
        batch_id: String,
        user: UserId,
        coupon_id: String,
        now: Timestamp,
        reply: Reply<ClaimOutcome>,
    },
    SetOrderCoupon {
        id: OrderId,
        user: UserId,
        coupon_id: Option<String>,
        now: Timestamp,
        reply: Reply<EditOutcome>,
    },
    SaveDeliveries {
        webhook: String,
        deliveries: Deliveries,
        reply: Reply<()>,
    },
    TakeLease {
        name: &'static str,
        holder: String,
        until: Timestamp,
        now: Timestamp,
        reply: Reply<bool>,
    },
    PruneEvents {
        before: Timestamp,
        max: usize,
        reply: Reply<u64>,
    },
    Flush {
        reply: Reply<()>,
    },
}

pub(crate) type Queue = mpsc::Receiver<Job>;

/// The writer's queue: callers hold the sender, the writer the receiver.
pub(crate) fn queue() -> (mpsc::Sender<Job>, Queue) {
    mpsc::channel(QUEUE_DEPTH)
}

/// A job whose statements have run: what tells its waiter the outcome once
/// the commit's is known.
pub(crate) struct Ran {
    /// The orders an insert job wrote, read back when a commit's outcome is
    /// unknown; None for other jobs.
    pub new_orders: Option<Vec<Keyed>>,
    report: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

impl Ran {
    /// Tells the waiter: the job's own result if the commit held, else the
    /// commit's error. A waiter that has gone away is no error.
    pub fn report(self, commit: Result<(), StoreError>) {
        (self.report)(commit)
    }

    fn of<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Self {
        Ran {
            new_orders: None,
            report: Box::new(move |commit| {
                let _ = reply.send(commit.and(result));
            }),
        }
    }

    fn insert(
        orders: Vec<Keyed>,
        settle: Option<Settle>,
        reply: Reply<Vec<OrderId>>,
        refused: &HashSet<String>,
    ) -> Self {
        let refused: Vec<OrderId> = orders
            .iter()
            .filter(|(o, _)| refused.contains(o.id.as_str()))
            .map(|(o, _)| o.id.clone())
            .collect();
        Ran {
            new_orders: Some(orders),
            report: Box::new(move |commit| match settle {
                Some(settle) => {
                    let result = commit.and_then(|()| match refused.first() {
                        Some(id) => Err(StoreError::Conflict(id.to_string())),
                        None => Ok(()),
                    });
                    settle(&result);
                    let _ = reply.send(result.map(|()| Vec::new()));
                }
                None => {
                    let _ = reply.send(commit.map(|()| refused));
                }
            }),
        }
    }
}

fn not_run() -> StoreError {
    StoreError::database("the batch was not run")
}

impl Job {
    /// The job, not run: only met in a batch that fails as a whole.
    pub fn not_run(self) -> Ran {
        match self {
            Job::Insert {
                orders,
                settle,
                reply,
                ..
            } => Ran::insert(orders, settle, reply, &HashSet::new()),
            Job::Cancel { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::Pay { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::AfterSale { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::Expire { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::MarkReleased { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::AddRestock { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::SaveDrop { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::SavePromotion { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::EndPromotion { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::AddAddress { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::DeleteAddress { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::SetOrderAddress { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::PayIntent { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::SaveCouponBatch { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::ClaimCoupon { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::SetOrderCoupon { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::SaveDeliveries { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::TakeLease { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::PruneEvents { reply, .. } => Ran::of(reply, Err(not_run())),
            Job::Flush { reply } => Ran::of(reply, Ok(())),
        }
    }

    /// Runs the job's statements (an insert's ran with the batch's, which
    /// refused `refused`). A savepoint that cannot be taken or ended fails
    /// the batch: that error comes back beside the job.
    async fn run<S: Sql>(
        self,
        db: &mut Recorded<'_, S>,
        refused: &HashSet<String>,
    ) -> (Ran, Option<StoreError>) {
        // Runs one change in a savepoint of its own.
        macro_rules! savepointed {
            ($reply:expr, $change:expr) => {{
                let outcome = match savepoint(db).await {
                    Ok(()) => {
                        let mark = db.mark();
                        let result = $change.await;
                        release(db, mark, result).await
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(result) => (Ran::of($reply, result), None),
                    Err(e) => (Ran::of($reply, Err(e.clone())), Some(e)),
                }
            }};
        }
        match self {
            Job::Insert {
                orders,
                settle,
                reply,
                ..
            } => (Ran::insert(orders, settle, reply, refused), None),
            Job::Flush { reply } => (Ran::of(reply, Ok(())), None),
            Job::Cancel {
                id,
                user,
                now,
                reply,
            } => savepointed!(reply, orders::cancel(db, &id, &user, now)),
            Job::Pay {
                notice,
                shipping,
                now,
                reply,
            } => savepointed!(reply, orders::pay(db, &notice, &shipping, now)),
            Job::AfterSale {
                id,
                user,
                request,
                shipping,
                now,
                reply,
            } => savepointed!(
                reply,
                after_sale_rows::apply(db, &id, user.as_ref(), &request, &shipping, now)
            ),
            Job::Expire { now, max, reply } => {
                savepointed!(reply, orders::expire_due(db, now, max))
            }
            Job::MarkReleased { ids, reply } => {
                savepointed!(reply, orders::mark_released(db, &ids))
            }
            Job::AddRestock { record, now, reply } => {
                savepointed!(reply, orders::add_restock(db, &record, now))
            }
            Job::SaveDrop {
                id,
                definition,
                now,
                reply,
            } => savepointed!(reply, orders::save_drop(db, &id, &definition, now)),
            Job::SavePromotion {
                id,
                definition,
                now,
                reply,
            } => savepointed!(reply, promotion_rows::save(db, &id, &definition, now)),
            Job::EndPromotion { id, now, reply } => {
                savepointed!(reply, promotion_rows::end(db, &id, now))
            }
            Job::AddAddress {
                user,
                address,
                reply,
            } => savepointed!(
                reply,
                address_rows::add(db, &user, &address, crate::address::MAX_PER_SHOPPER)
            ),
            Job::DeleteAddress { user, id, reply } => {
                savepointed!(reply, address_rows::delete(db, &user, &id))
            }
            Job::SetOrderAddress {
                id,
                user,
                address_id,
                reply,
            } => savepointed!(
                reply,
                address_rows::set_order_address(db, &id, &user, &address_id)
            ),
            Job::PayIntent {
                id,
                user,
                request,
                now,
                reply,
            } => savepointed!(reply, intent_rows::issue(db, &id, &user, &request, now)),
            Job::SaveCouponBatch {
                batch,
                definition,
                now,
                reply,
            } => savepointed!(reply, coupon_rows::save_batch(db, &batch, &definition, now)),
            Job::ClaimCoupon {
                batch_id,
                user,
                coupon_id,
                now,
                reply,
            } => savepointed!(
                reply,
                coupon_rows::claim(db, &batch_id, &user, &coupon_id, now)
            ),
            Job::SetOrderCoupon {
                id,
                user,
                coupon_id,
                now,
                reply,
            } => savepointed!(
                reply,
                coupon_rows::set_order_coupon(db, &id, &user, coupon_id.as_deref(), now)
            ),
            Job::SaveDeliveries {
                webhook,
                deliveries,
                reply,
            } => savepointed!(reply, webhook_rows::save(db, &webhook, &deliveries)),
            Job::TakeLease {
                name,
                holder,
                until,
                now,
                reply,
            } => savepointed!(
                reply,
                webhook_rows::take_lease(db, name, &holder, until, now)
            ),
            Job::PruneEvents { before, max, reply } => {
                savepointed!(reply, event_rows::prune(db, before, max))
            }
        }
    }
}

async fn savepoint<S: Sql>(db: &mut S) -> Result<(), StoreError> {
    db.execute("SAVEPOINT job", &[]).await.map(drop)
}

/// Keeps the job's changes if it succeeded, undoes them (and forgets the
/// events it recorded since `mark`) if it failed; the job's result, unless
/// the savepoint could not be ended.
async fn release<S: Sql, T>(
    db: &mut Recorded<'_, S>,
    mark: usize,
    result: Result<T, StoreError>,
) -> Result<Result<T, StoreError>, StoreError> {
    if result.is_err() {
        db.forget_since(mark);
        db.execute("ROLLBACK TO SAVEPOINT job", &[]).await?;
    }
    db.execute("RELEASE SAVEPOINT job", &[]).await?;
    Ok(result)
}

/// Runs a batch inside the transaction `db` is in: the new orders of every
/// insert job in one statement, then each other job in a savepoint, then
/// the events of every change that held, in one statement. Returns
/// every job, ready to report, and whether the transaction may commit: a
/// statement that fails outside a savepoint, or a transaction the database
/// gave up, fails the batch as a whole (every job reported failed, none
/// stored), never committing what is left of it.
pub(crate) async fn run_batch<S: Sql>(
    db: &mut S,
    batch: &mut Vec<Job>,
) -> (Vec<Ran>, Result<(), StoreError>) {
    let db = &mut Recorded::new(db);
    let mut created = Vec::new();
    for job in batch.iter_mut() {
        if let Job::Insert {
            created: events, ..
        } = job
        {
            created.append(events);
        }
    }
    let new_orders: Vec<&Keyed> = batch
        .iter()
        .flat_map(|job| match job {
            Job::Insert { orders, .. } => orders.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    let inserted = orders::insert_orders(db, &new_orders, created).await;
    let (refused, mut failure) = match inserted {
        Ok(refused) => (refused, None),
        Err(e) => (HashSet::new(), Some(e)),
    };
    let mut ran = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        if failure.is_none() && db.transaction_lost() {
            failure = Some(StoreError::database(
                "the database rolled the batch's transaction back",
            ));
        }
        if failure.is_some() {
            ran.push(job.not_run());
            continue;
        }
        let (done, failed) = job.run(db, &refused).await;
        ran.push(done);
        failure = failed;
    }
    if failure.is_none() {
        failure = db.insert_events().await.err();
    }
    if failure.is_none() && db.transaction_lost() {
        failure = Some(StoreError::database(
            "the database rolled the batch's transaction back",
        ));
    }
    if let Some(e) = &failure {
        tracing::error!(error = %e, jobs = ran.len(), "order writer batch failed");
    }
    (ran, failure.map_or(Ok(()), Err))
}
