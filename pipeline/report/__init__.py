"""The report stage: runs and eval metrics read into tables (`data`), figures (`plots`), the
report's content as format-free sections (`sections`), HTML/Markdown rendering (`render`), and
the stage that writes reports/ (`build`).
"""
