"""fastmirror: an HTTP/1.1 proxy that sends each request to a primary and a copy to shadows.

The client always gets the primary's response; shadows get a sampled copy whose
failures the client never sees. This module holds only the version: importing the
package reads no configuration and starts nothing.
"""

__version__ = "0.1.0"
