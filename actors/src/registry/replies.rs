//! Driving replies: admitting a reply with its model's pool, starting the model call while the
//! question commits, and storing the outcome on the chat actor's thread (`Drive`).

use std::sync::Arc;

use actix::prelude::*;

use super::*;
use crate::chat::*;
use crate::error::ChatError;
use crate::generation::{Generation, StoredReply};
use crate::llm::{Admission, JobOutcome};
use crate::model::{ChatId, UserId};
use crate::ports::{CompletionRequest, Usage, UsageRecord};
use crate::writer::{AckMode, CommitTicket};

impl Chats {
    /// Admits a reply: the user's token quota first (nothing is taken by asking), then
    /// [`Self::admit`].
    pub(super) async fn admit_reply(
        &self,
        user: UserId,
        model: Option<&str>,
    ) -> Result<Admission, ChatError> {
        if let Some(quotas) = &self.inner.rt.quotas {
            quotas.check(user).await?;
        }
        self.admit(user, model)
    }

    /// Takes the user's place among their replies (`ReplyGate`), resolves a model and reserves
    /// a place in its provider's queue.
    pub(super) fn admit(&self, user: UserId, model: Option<&str>) -> Result<Admission, ChatError> {
        let pass = match &self.inner.rt.replies {
            Some(gate) => Some(gate.admit(user)?),
            None => None,
        };
        let mut admission = self.inner.llm.resolve(model)?.admit()?;
        admission.pass = pass;
        Ok(admission)
    }

    /// Settles a change that may have started a reply, and sets the reply going with its
    /// provider.
    ///
    /// With durable acks the model call starts while the question commits, so the commit is
    /// not in the time to first token: the tokens wait in the generation's log, which nobody
    /// can follow before this returns its id (after the commit), and the reply is stored only
    /// once the question is (see [`Self::drive`]). A failed commit cancels the call.
    pub(super) async fn launch<T>(
        &self,
        user: UserId,
        chat: ChatId,
        admission: Option<Admission>,
        applied: Applied<T>,
        job: Option<GenerationJob>,
    ) -> Result<(T, Option<Arc<Generation>>), ChatError> {
        let (Some(admission), Some(job)) = (admission, job) else {
            return Ok((self.settle(applied).await?, None));
        };
        // Buffered acks do not wait for the commit, and neither does the reply.
        let durable = self.inner.rt.writer.ack_mode == AckMode::Durable;
        let question = durable.then(|| applied.commit.clone());
        let generation = self.drive(user, chat, admission, job, question);
        match self.settle(applied).await {
            Ok(value) => Ok((value, Some(generation))),
            Err(e) => {
                // The drive task saw the same commit fail: it cancels the call, frees the
                // branch and ends the generation; answer once it has.
                let _ = generation.outcome().await;
                Err(e)
            }
        }
    }

    async fn abort(&self, user: UserId, chat: ChatId, job: &GenerationJob) {
        let generation = &job.generation;
        let msg = AbortGeneration {
            user,
            generation: generation.id,
            branch: generation.branch,
            idempotency_key: job.idempotency_key.clone(),
        };
        let _ = self.call(chat, msg).await;
        self.inner
            .rt
            .generations
            .release(generation.id, chat, generation.branch);
    }

    /// Queues a started reply with its provider and, on the thread of the chat's actor, stores
    /// the result when it arrives (see [`Drive`]). With `question`, the commit of the message
    /// being answered is still in flight: the reply is stored only if it lands; if it fails, the
    /// call is cancelled, the branch freed and nothing stored.
    fn drive(
        &self,
        user: UserId,
        chat: ChatId,
        admission: Admission,
        job: GenerationJob,
        question: Option<CommitTicket>,
    ) -> Arc<Generation> {
        let generation = job.generation.clone();
        generation.push(crate::generation::EventKind::UserMessage(
            job.reply_to.clone(),
        ));
        let provider = admission.model.provider.config.name.clone();
        let request = CompletionRequest {
            turns: job.turns.clone(),
            model: admission.model.model.clone(),
        };
        let outcome = admission.submit(request, generation.clone());
        let home = job
            .home
            .clone()
            .unwrap_or_else(|| self.own_arbiter(chat).clone());
        let drive = Drive {
            chats: self.clone(),
            user,
            chat,
            job,
            provider,
            step: Step::Waiting { question, outcome },
            handed_over: false,
        };
        // Refused by a stopped thread, it is dropped, and hands itself over (`Drive::drop`).
        home.spawn(drive.run());
        generation
    }

    /// The registry's arbiter for a chat (`Placement::Spread` starts its actor there).
    fn own_arbiter(&self, chat: ChatId) -> &ArbiterHandle {
        &self.inner.arbiters[arbiter_for(chat, self.inner.arbiters.len())]
    }

    /// What storing a model's outcome takes: the reply, or why there is none.
    fn ending(
        &self,
        user: UserId,
        job: &GenerationJob,
        provider: &str,
        outcome: JobOutcome,
    ) -> Ending {
        let generation = &job.generation;
        let (content, model, finish_reason, usage, incomplete) = match outcome {
            JobOutcome::Completed(c) => (c.content, c.model, c.finish_reason, c.usage, false),
            JobOutcome::Cancelled { partial, model } => {
                (partial, model, Some("cancelled".to_owned()), None, true)
            }
            JobOutcome::Failed(e) => return Ending::Abort(e.into()),
        };
        let mut metadata = serde_json::json!({
            "generation_id": generation.id,
            "provider": provider,
            "finish_reason": finish_reason,
        });
        if let Some(usage) = usage {
            metadata["usage"] = serde_json::json!(usage);
        }
        if incomplete {
            metadata["incomplete"] = serde_json::Value::Bool(true);
        }
        let msg = CompleteGeneration {
            user,
            generation: generation.id,
            branch: generation.branch,
            parent: generation.reply_to,
            content: Arc::from(content),
            model: Arc::from(model),
            metadata: Arc::new(metadata),
            idempotency_key: job.idempotency_key.clone(),
            // Committed with the reply, in its batch: once per generation, and before the
            // reply is acknowledged, so the next reply's quota check sees it.
            usage: usage.map(|usage| {
                Box::new(UsageRecord {
                    generation: generation.id,
                    user: generation.owner,
                    chat: generation.chat,
                    model: generation.model.to_string(),
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    at: crate::model::now(),
                })
            }),
        };
        Ending::Store {
            msg,
            usage,
            cancelled: incomplete,
        }
    }

    /// Stores a reply (complete, or partial and marked incomplete when cancelled).
    async fn store_reply(
        &self,
        chat: ChatId,
        job: &GenerationJob,
        msg: CompleteGeneration,
        usage: Option<Usage>,
        cancelled: bool,
    ) -> Result<StoredReply, ChatError> {
        let generation = &job.generation;
        let stored = match self.call(chat, msg).await {
            Ok(applied) => self.settle(applied).await,
            Err(e) => Err(e),
        };
        // Normally released by the actor with the append; this covers a chat that is gone.
        self.inner
            .rt
            .generations
            .release(generation.id, chat, generation.branch);
        let message = stored?;
        if let (Some(quotas), Some(usage)) = (&self.inner.rt.quotas, &usage) {
            let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            quotas.spent(generation.owner, tokens).await;
        }
        Ok(StoredReply {
            message,
            usage,
            cancelled,
        })
    }
}

/// A started reply until it is stored or dropped: the drive task's state, in a value of its own
/// so that a task dropped with its thread hands what is left to the registry's arbiter for the
/// chat.
///
/// The task runs on the thread of the chat's actor, where storing the reply is a call on one
/// thread. With `Placement::Local` that is an HTTP worker's, which stops before the shutdown
/// stores the replies it cut short; the task then goes with it, and `Drop` starts the rest on
/// the registry's arbiter. Each step can be taken again there: the commit and the outcome are
/// awaited through handles that outlive the task, and storing a reply that is stored already
/// answers with it (`ChatCore::complete_generation`).
struct Drive {
    chats: Chats,
    user: UserId,
    chat: ChatId,
    job: GenerationJob,
    provider: String,
    step: Step,
    /// Handed over once already: dropped again, it ends the generation unstored.
    handed_over: bool,
}

enum Step {
    /// Waiting for the question's commit (durable acks) and the model's outcome.
    Waiting {
        question: Option<CommitTicket>,
        outcome: tokio::sync::oneshot::Receiver<JobOutcome>,
    },
    /// The outcome is known.
    Ending(Ending),
    Done,
}

enum Ending {
    Store {
        msg: CompleteGeneration,
        usage: Option<Usage>,
        cancelled: bool,
    },
    /// Nothing to store (the question's commit or the model call failed): free the branch.
    Abort(ChatError),
}

impl Drive {
    async fn run(mut self) {
        if let Step::Waiting { question, outcome } = &mut self.step {
            let question = match question {
                Some(commit) => commit.clone().await.map_err(commit_error),
                None => Ok(()),
            };
            if question.is_err() {
                self.job.generation.cancel();
            }
            let outcome = outcome.await.unwrap_or_else(|_| {
                JobOutcome::Failed(crate::ports::LlmError::upstream(
                    None,
                    "the model provider task panicked",
                ))
            });
            let ending = match question {
                Ok(()) => self
                    .chats
                    .ending(self.user, &self.job, &self.provider, outcome),
                Err(e) => Ending::Abort(e),
            };
            self.step = Step::Ending(ending);
        }
        let Step::Ending(ending) = &self.step else {
            return;
        };
        let (chats, chat, job) = (&self.chats, self.chat, &self.job);
        let ended = match ending {
            Ending::Store {
                msg,
                usage,
                cancelled,
            } => {
                chats
                    .store_reply(chat, job, msg.clone(), *usage, *cancelled)
                    .await
            }
            Ending::Abort(e) => {
                chats.abort(self.user, chat, job).await;
                Err(e.clone())
            }
        };
        self.step = Step::Done;
        self.job.generation.finish(ended);
        self.chats
            .inner
            .rt
            .generations
            .ended(self.job.generation.id);
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        let step = std::mem::replace(&mut self.step, Step::Done);
        if matches!(step, Step::Done) {
            return;
        }
        let generation = &self.job.generation;
        if !self.handed_over {
            tracing::debug!(generation = %generation.id, "a reply's thread stopped; storing it elsewhere");
            let rest = Drive {
                chats: self.chats.clone(),
                user: self.user,
                chat: self.chat,
                job: self.job.clone(),
                provider: std::mem::take(&mut self.provider),
                step,
                handed_over: true,
            };
            // Refused (the registry is stopping too), `rest` ends the generation as it drops.
            self.chats.own_arbiter(self.chat).spawn(rest.run());
            return;
        }
        tracing::warn!(generation = %generation.id, "a reply could not be stored: every thread it could run on has stopped");
        let rt = &self.chats.inner.rt;
        rt.generations
            .release(generation.id, self.chat, generation.branch);
        generation.finish(Err(ChatError::StorageUnavailable));
        rt.generations.ended(generation.id);
    }
}

pub(super) fn reply_spec(admission: &Admission) -> ReplySpec {
    ReplySpec {
        model: Arc::from(admission.model.label()),
        context_chars: admission.context_chars(),
    }
}
