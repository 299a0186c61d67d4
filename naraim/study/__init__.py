"""The real-data study (scripts/study.py): NARAIM and AIM pre-training against a random-init control, every
arm probed by an attentive sweep, kNN and a linear sweep; run.py runs it, report.py writes the results."""
