"""From records to what is shown, with no widget: colours and glyphs, number formats, the mask's
pixel grid, the metrics screen's tables, speculation and event lines in words. The widgets and
the headless printer draw with these.
"""
