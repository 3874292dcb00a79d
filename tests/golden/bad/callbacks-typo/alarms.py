class ThroughputAlarm:
    def __init__(self):
        self.slow = 0

    def on_train_start(self, context):
        pass

    def on_trian_step_end(self, context):
        pass

    def on_eval_end(self):
        pass

    def report(self, context):
        pass
