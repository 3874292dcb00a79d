class LossAlarm:
    """Stops the run when the loss rises above a limit."""

    LIMIT = 100.0

    def on_train_step_end(self, context):
        if context.losses["lm loss"] > self.LIMIT:
            raise RuntimeError(f"loss {context.losses['lm loss']} above {self.LIMIT}")


class StepCounter:
    def __init__(self):
        self.seen = 0

    def on_train_start(self, context):
        context.user_state.setdefault("steps", 0)

    def on_train_step_end(self, context):
        context.user_state["steps"] += 1
        self._count()

    def _count(self):
        self.seen += 1
