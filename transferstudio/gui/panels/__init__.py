"""The window's panels: one module per dock (and the central training view).

Each panel owns its widgets and the state behind them, and tells the window what happened
through Qt signals; the window (``gui/main_window.py``) wires panels together and owns the
actions, menus, docks and files. A panel never reaches into another panel's widgets.
"""
