"""The 16550A UART's registers and bits (National PC16550D data sheet, "Register Description").

Eight registers at base + 0..7; with LCR.DLAB set, offsets 0 and 1 are the
divisor latch. COM1 is at 0x3F8 on IRQ4 (PC/AT).
"""

from __future__ import annotations

COM1 = 0x3F8
COM1_IRQ = 4
UART_REGISTERS = 8

RBR_THR = 0  # receive buffer (read) / transmitter holding register (write)
IER = 1
IIR_FCR = 2  # interrupt identification (read) / FIFO control (write)
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI = 0x01  # received data available (and, with FIFOs, the character timeout)
IER_THRI = 0x02  # transmitter holding register empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08  # modem status
IER_MASK = 0x0F

IIR_NO_INTERRUPT = 0x01
IIR_MODEM_STATUS = 0x00
IIR_THR_EMPTY = 0x02
IIR_RX_DATA = 0x04
IIR_LINE_STATUS = 0x06
IIR_RX_TIMEOUT = 0x0C
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FCR_TRIGGER_SHIFT = 6
RX_TRIGGER_LEVELS = (1, 4, 8, 14)  # FCR bits 7:6
FIFO_SIZE = 16
TX_FIFO_SIZE = FIFO_SIZE  # what a driver may write after THRE (Linux 8250 tx_loadsz)

LCR_WLEN8 = 0x03  # 8 data bits, 1 stop bit, no parity ("8N1")
LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08  # on a PC also the gate of the UART's interrupt line
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_FIFO_ERROR = 0x80
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04  # trailing edge of ring indicator
MSR_DDCD = 0x08
MSR_DELTAS = 0x0F
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS  # what a QEMU chardev reports

__all__ = ["COM1", "COM1_IRQ", "LSR", "LSR_THRE", "MCR", "MSR", "RBR_THR"]
