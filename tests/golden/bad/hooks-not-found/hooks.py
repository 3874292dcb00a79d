def forward_stp(state, data_iterator, model, return_schedule_plan=False):
    pass
