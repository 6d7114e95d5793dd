"""Exit statuses of every `nodecompat` command, following grep's convention.

Scripts and CI jobs branch on these, so they are one fact: 0 yes (compatible, clean, done), 1 no (not
compatible, problems found, no node fits), 2 error (the question could not be answered; the reason
is on stderr).
"""

YES = 0
NO = 1
ERROR = 2
