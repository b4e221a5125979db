"""The report stage: runs and eval metrics read into tables (`data`), figures (`plots`) and the
markdown/HTML report (`build`).
"""
