"""The pure core: a request and its facts in, a decision out. No I/O; compiled with mypyc.

request (the attributes a decision reads), decision (Decision, Verdict, Reason), engine (the
policy and header From: rules), replies (reply templates: placeholders and render), limits
(hard limits, each with why). Every front end (policy/, milter/, cli/) gathers the facts and
asks the engine; nothing here imports a front end.
"""
